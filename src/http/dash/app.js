// rlay's operator dashboard. Reads the relay's JSON routes with the admin password kept in
// sessionStorage (sent as a Bearer header, never in a URL or cookie). All data goes into the
// page as text nodes, never as markup.
'use strict';

(() => {
  const KEY = 'rlay-admin-password';
  // The relay's routes sit beside /dash, under whatever prefix a reverse proxy adds.
  const BASE = location.pathname.replace(/\/dash\/?$/, '');
  const VIEWS = ['overview', 'hosts', 'accounts', 'consumers', 'bans', 'collections'];
  const $ = (id) => document.getElementById(id);

  let password = sessionStorage.getItem(KEY);
  let current = null;
  let refreshTimer = null;

  class AuthError extends Error {}

  async function api(path, { method, body, query } = {}) {
    const headers = { Authorization: 'Bearer ' + password, Accept: 'application/json' };
    const init = { method: method || 'GET', headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
      init.method = method || 'POST';
    }
    let url = BASE + path;
    if (query) url += '?' + new URLSearchParams(query).toString();
    const r = await fetch(url, init);
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (r.status === 401) throw new AuthError('Wrong password');
    if (!r.ok) throw new Error((data && (data.message || data.error)) || `${r.status} ${r.statusText}`);
    return data;
  }

  // ---- small DOM helpers -------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }
  const fmt = new Intl.NumberFormat('en');
  const num = (n) => (n === null || n === undefined ? '—' : fmt.format(n));
  const rate = (n) => (n ? (n >= 100 ? fmt.format(Math.round(n)) : n.toFixed(1)) : '0');
  function bytes(n) {
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + ' ' + u[i];
  }
  // How long since `iso`: "5m"; '—' for none.
  function age(iso) {
    if (!iso) return '—';
    const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
    if (!isFinite(s)) return iso;
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm';
    if (s < 86400) return Math.floor(s / 3600) + 'h';
    return Math.floor(s / 86400) + 'd';
  }
  const ago = (iso) => (iso ? age(iso) + ' ago' : '—');
  function pairs(dl, entries) {
    dl.replaceChildren();
    for (const [k, v] of entries) dl.append(el('dt', { text: k }), el('dd', { text: v === null || v === undefined || v === '' ? '—' : String(v) }));
  }
  function notice(text, bad) {
    const n = $('notice');
    n.textContent = text;
    n.className = 'notice' + (bad ? ' bad' : '');
    n.hidden = !text;
  }
  function failed(e) {
    if (e instanceof AuthError) return logout('Your password is no longer accepted; sign in again.');
    notice(String(e.message || e), true);
  }

  // ---- confirmation and input dialog ---------------------------------------------------------
  function ask(title, text, { input, danger } = {}) {
    const d = $('dialog');
    $('dialog-title').textContent = title;
    $('dialog-text').textContent = text;
    $('dialog-input-label').hidden = input === undefined;
    $('dialog-input').value = input === undefined ? '' : String(input);
    $('dialog-ok').className = danger ? 'danger' : '';
    d.returnValue = '';
    return new Promise((resolve) => {
      d.addEventListener('close', () => {
        if (d.returnValue !== 'ok') return resolve(null);
        resolve(input === undefined ? true : $('dialog-input').value);
      }, { once: true });
      d.showModal();
      (input === undefined ? $('dialog-cancel') : $('dialog-input')).focus();
    });
  }

  // ---- login ---------------------------------------------------------------------------------
  async function login(ev) {
    ev.preventDefault();
    const err = $('login-error');
    err.hidden = true;
    password = $('password').value;
    try {
      await api('/admin/subs/getEnabled');
    } catch (e) {
      password = null;
      err.textContent = e instanceof AuthError ? 'Wrong password.' : 'Cannot reach the relay: ' + e.message;
      err.hidden = false;
      $('password').select();
      return;
    }
    sessionStorage.setItem(KEY, password);
    $('password').value = '';
    start();
  }

  function logout(message) {
    sessionStorage.removeItem(KEY);
    password = null;
    clearInterval(refreshTimer);
    refreshTimer = null;
    current = null;
    hostsState.all = [];
    $('app').hidden = true;
    for (const v of VIEWS) $('view-' + v).hidden = true;
    $('login').hidden = false;
    const err = $('login-error');
    err.textContent = typeof message === 'string' ? message : '';
    err.hidden = typeof message !== 'string';
    $('password').focus();
  }

  function start() {
    $('login').hidden = true;
    $('app').hidden = false;
    route();
  }

  // ---- views ---------------------------------------------------------------------------------
  function route() {
    if (!password) return;
    const name = VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : 'overview';
    if (name !== current) {
      current = name;
      for (const v of VIEWS) $('view-' + v).hidden = v !== name;
      for (const a of $('nav').querySelectorAll('a')) {
        if (a.dataset.view === name) a.setAttribute('aria-current', 'page');
        else a.removeAttribute('aria-current');
      }
      notice('');
    }
    clearInterval(refreshTimer);
    const load = LOADERS[name];
    load();
    if (name === 'overview' || name === 'consumers') refreshTimer = setInterval(load, 5000);
  }

  async function loadOverview() {
    let s, alerts;
    try {
      [s, alerts] = await Promise.all([api('/status'), api('/admin/alerts/list')]);
    } catch (e) { return failed(e); }
    readyPill(s);
    const c = $('overview-cards');
    c.replaceChildren();
    const card = (label, value, sub) => c.append(el('div', { class: 'card' },
      el('div', { class: 'muted', text: label }), el('div', { class: 'metric', text: value }),
      sub ? el('div', { class: 'muted', text: sub }) : null));
    const h = s.hosts || {};
    const eps = s.events_per_sec || {};
    card('Readiness', s.ready ? 'Ready' : 'Not ready');
    card('Coverage', Math.round((h.coverage || 0) * 1000) / 10 + '%', `${num(h.expected_connected)} of ${num(h.expected)} expected hosts`);
    card('Hosts connected', num(h.connected), `${num(h.known)} known, ${num(h.silent)} silent`);
    card('Events/s (1 m)', rate(eps['1m']), `5 m ${rate(eps['5m'])} · 1 h ${rate(eps['1h'])}`);
    card('Head seq', num(s.seq && s.seq.head));
    card('Replay window', age(s.seq && s.seq.oldest_time),
      s.seq && s.seq.oldest ? 'from seq ' + num(s.seq.oldest) : 'empty log');
    const cons = s.consumers || {};
    card('Consumers', num((cons.firehose || 0) + (cons.jetstream || 0)), `firehose ${num(cons.firehose)} · jetstream ${num(cons.jetstream)}`);
    card('Collection index', s.index ? num(s.index.collections) + ' collections' : '—', s.index ? num(s.index.pairs) + ' (account, collection) pairs' : '');
    if (s.backfill) card('Backfill', `${num(s.backfill.done)} / ${num(s.backfill.collections)}`, (s.backfill.running ? 'running · ' : '') + num(s.backfill.imported) + ' imported');
    card('Identity lookups', num(s.identity && s.identity.lookups_pending), 'pending');
    // The history's steps, then the last minute's rate as the point for now.
    const history = (s.history || []).slice();
    if (history.length && typeof eps['1m'] === 'number') history.push([Date.now(), eps['1m']]);
    chart($('chart'), history);
    pairs($('hosts-by-status'), Object.entries(h.by_status || {}).map(([k, v]) => [k, num(v)]));
    const reasons = $('reasons');
    reasons.replaceChildren(...(s.reasons || []).map((r) => el('li', { text: typeof r === 'string' ? r : (r.message || r.reason || JSON.stringify(r)) })));
    if (!reasons.children.length) reasons.append(el('li', { class: 'muted', text: 'Nothing: the relay is ready.' }));
    const list = $('alerts');
    const recent = (alerts && alerts.recent) || [];
    list.replaceChildren(...recent.slice(-20).reverse().map((a) => el('li', { text: `${a.at || a.time || ''} ${a.text || a.message || JSON.stringify(a)}` })));
    if (!list.children.length) list.append(el('li', { class: 'muted', text: 'No alerts sent.' }));
  }

  function readyPill(s) {
    const p = $('ready-pill');
    p.textContent = s.ready ? 'ready' : 'not ready';
    p.className = 'pill ' + (s.ready ? 'ok' : 'bad');
  }

  const SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    return e;
  }
  function chart(box, history) {
    // Drawn at the box's own width, so text and lines are not stretched.
    const W = Math.max(280, Math.round(box.clientWidth || 600)), H = 180, L = 44, B = 18;
    const s = svg('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H });
    if (history.length < 2) {
      const t = svg('text', { x: L, y: H / 2 });
      t.textContent = 'Collecting samples (one every 10 s)…';
      s.append(t);
      return box.replaceChildren(s);
    }
    const t0 = history[0][0], t1 = history[history.length - 1][0];
    const max = Math.max(1, ...history.map((p) => p[1]));
    const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - 4);
    const y = (v) => H - B - (v / max) * (H - B - 8);
    const pts = history.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
    s.append(svg('line', { class: 'axis', x1: L, y1: H - B, x2: W, y2: H - B }));
    s.append(svg('polygon', { class: 'area', points: `${L},${H - B} ${pts.join(' ')} ${x(t1).toFixed(1)},${H - B}` }));
    s.append(svg('polyline', { class: 'line', points: pts.join(' ') }));
    const label = (tx, ty, text, anchor) => {
      const e = svg('text', { x: tx, y: ty, 'text-anchor': anchor || 'start' });
      e.textContent = text;
      s.append(e);
    };
    label(L - 4, 12, rate(max), 'end');
    label(L - 4, H - B, '0', 'end');
    label(L, H - 4, Math.round((t1 - t0) / 60000) + ' min ago');
    label(W - 2, H - 4, 'now', 'end');
    box.replaceChildren(s);
  }

  // ---- hosts: a virtual table (only the visible rows exist in the page) ------------------------
  const hostsState = { all: [], shown: [], rowH: 40 };

  async function loadHosts() {
    try {
      const list = await api('/admin/pds/list');
      hostsState.all = (list || []).map((h) => ({
        name: h.Host, status: h.Status, since: h.ConnectedSince, rate: h.EventsPerSecond || 0,
        today: h.EventsToday || 0, accounts: h.RepoCount || 0, limit: h.RepoLimit || 0,
        cursor: h.Cursor, last: h.LastEventAt, connected: h.HasActiveConnection,
        lastMs: h.LastEventAt ? Date.parse(h.LastEventAt) : 0,
        key: (h.Host || '').toLowerCase(),
      }));
    } catch (e) { return failed(e); }
    applyHosts();
    // For the browser test and for anyone profiling: when the first full table was on screen.
    if (!performance.getEntriesByName('hosts-rendered').length) {
      requestAnimationFrame(() => performance.mark('hosts-rendered'));
    }
  }

  function applyHosts() {
    const q = $('host-filter').value.trim().toLowerCase();
    const status = $('host-status').value;
    const sort = $('host-sort').value;
    const pct = (h) => (h.limit > 0 ? h.accounts / h.limit : 0);
    const by = {
      rate: (a, b) => b.rate - a.rate,
      accounts: (a, b) => b.accounts - a.accounts,
      limit: (a, b) => pct(b) - pct(a),
      last: (a, b) => b.lastMs - a.lastMs,
      name: (a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0),
    }[sort];
    hostsState.shown = hostsState.all
      .filter((h) => (!q || h.key.includes(q)) && (!status || h.status === status))
      .sort((a, b) => by(a, b) || (a.key < b.key ? -1 : 1));
    $('host-count').textContent = `${num(hostsState.shown.length)} of ${num(hostsState.all.length)} hosts`;
    hostsState.rowH = parseFloat(getComputedStyle($('hosts-table')).getPropertyValue('--row-h')) || 40;
    $('hosts-spacer').style.height = hostsState.shown.length * hostsState.rowH + 'px';
    renderHostRows();
  }

  function renderHostRows() {
    const vp = $('hosts-viewport');
    const { rowH, shown } = hostsState;
    const first = Math.max(0, Math.floor(vp.scrollTop / rowH) - 5);
    const last = Math.min(shown.length, Math.ceil((vp.scrollTop + vp.clientHeight) / rowH) + 5);
    const rows = $('hosts-rows');
    rows.style.transform = `translateY(${first * rowH}px)`;
    const out = [];
    for (let i = first; i < last; i++) out.push(hostRow(shown[i]));
    rows.replaceChildren(...out);
  }

  function hostRow(h) {
    const pct = h.limit > 0 ? Math.round((h.accounts / h.limit) * 100) : 0;
    const banned = h.status === 'banned';
    const bar = el('span', { class: 'c-accounts bar' + (pct >= 100 ? ' full' : '') },
      el('progress', { max: Math.max(1, h.limit), value: Math.min(h.accounts, Math.max(1, h.limit)), 'aria-label': `${pct}% of the account limit` }),
      el('span', { text: `${num(h.accounts)} / ${num(h.limit)}` }));
    const acts = el('span', { class: 'acts' },
      el('button', { type: 'button', class: 'small ' + (banned ? '' : 'danger'), text: banned ? 'Unblock' : 'Block', 'data-act': banned ? 'unblock' : 'block', 'data-host': h.name }),
      el('button', { type: 'button', class: 'small quiet', text: 'Drop', title: 'Drop the connection (it reconnects)', 'data-act': 'drop', 'data-host': h.name, disabled: !h.connected }),
      el('button', { type: 'button', class: 'small quiet', text: 'Limit', title: 'Change the account limit', 'data-act': 'limit', 'data-host': h.name }));
    return el('div', { class: 'row', role: 'row', 'data-host': h.name },
      el('span', { class: 'c-name', title: h.name, text: h.name }),
      el('span', { class: 'c-status status-' + h.status, text: h.status }),
      el('span', { class: 'c-since', title: h.since || '', text: age(h.since) }),
      el('span', { class: 'c-rate num', text: rate(h.rate) }),
      el('span', { class: 'c-today num', text: num(h.today) }),
      bar,
      el('span', { class: 'c-cursor num', text: num(h.cursor) }),
      el('span', { class: 'c-last', title: h.last || '', text: ago(h.last) }),
      acts);
  }

  async function hostAction(ev) {
    const b = ev.target.closest('button[data-act]');
    if (!b) return;
    const host = b.dataset.host;
    const h = hostsState.all.find((x) => x.name === host);
    try {
      switch (b.dataset.act) {
        case 'block':
          if (!await ask('Block ' + host + '?', 'The relay disconnects from it, drops its events, and does not crawl it again until unblocked.', { danger: true })) return;
          await api('/admin/pds/block', { method: 'POST', query: { host } });
          notice(host + ' is blocked.');
          break;
        case 'unblock':
          if (!await ask('Unblock ' + host + '?', 'The relay may connect to it again.')) return;
          await api('/admin/pds/unblock', { method: 'POST', query: { host } });
          notice(host + ' is unblocked.');
          break;
        case 'drop':
          if (!await ask('Drop the connection to ' + host + '?', 'The relay closes the connection now and reconnects from its cursor.', { danger: true })) return;
          await api('/admin/subs/killUpstream', { method: 'POST', query: { host } });
          notice('Connection to ' + host + ' dropped.');
          break;
        case 'limit': {
          const v = await ask('Account limit of ' + host, `It has ${num(h ? h.accounts : 0)} accounts. New accounts beyond the limit are throttled.`, { input: h ? h.limit : 0 });
          if (v === null) return;
          const limit = parseInt(v, 10);
          if (!(limit >= 0)) return notice('The limit must be a whole number, 0 or more.', true);
          await api('/admin/pds/changeLimits', { body: { host, repo_limit: limit } });
          notice(`${host}: account limit set to ${num(limit)}.`);
          break;
        }
        default: return;
      }
    } catch (e) { return failed(e); }
    loadHosts();
  }

  async function requestCrawl(ev) {
    ev.preventDefault();
    const hostname = $('crawl-host').value.trim();
    if (!hostname) return;
    try {
      await api('/admin/pds/requestCrawl', { body: { hostname } });
    } catch (e) { return failed(e); }
    notice(hostname + ' will be crawled.');
    $('crawl-host').value = '';
    loadHosts();
  }

  // ---- accounts ------------------------------------------------------------------------------
  let account = null;
  async function lookUp(ev) {
    if (ev) ev.preventDefault();
    const q = $('account-q').value.trim();
    if (!q) return;
    try {
      account = await api('/admin/repo/info', { query: { q } });
    } catch (e) {
      $('account-result').hidden = true;
      return failed(e);
    }
    notice('');
    showAccount();
  }
  function showAccount() {
    const a = account;
    pairs($('account-fields'), [
      ['DID', a.did], ['Handle', a.handle], ['Host', a.host], ['PDS (DID document)', a.pds],
      ['Status', a.active ? 'active' : a.status], ['Local status', a.local_status],
      ['Upstream status', a.upstream_status], ['Rev', a.rev], ['Last commit', a.commit],
      ['Last commit at', a.last_commit_at], ['First seen', a.first_seen],
    ]);
    const down = a.local_status === 'takendown';
    $('takedown').hidden = down;
    $('reverse').hidden = !down;
    $('account-result').hidden = false;
  }
  async function takeDown(reverse) {
    const did = account && account.did;
    if (!did) return;
    const ok = reverse
      ? await ask('Reverse the takedown of ' + did + '?', 'Its events flow again.')
      : await ask('Take down ' + did + '?', 'The relay stops carrying its events and announces it as taken down.', { danger: true });
    if (!ok) return;
    try {
      await api(reverse ? '/admin/repo/reverseTakedown' : '/admin/repo/takeDown', { body: { did } });
    } catch (e) { return failed(e); }
    notice(did + (reverse ? ': takedown reversed.' : ': taken down.'));
    $('account-q').value = did;
    lookUp();
  }

  // ---- consumers, bans, collections ----------------------------------------------------------
  async function loadConsumers() {
    let list;
    try { list = await api('/admin/consumers/list'); } catch (e) { return failed(e); }
    $('consumer-count').textContent = `${num(list.length)} connected`;
    $('consumers').replaceChildren(...list.map((c) => {
      const js = c.jetstream;
      const filters = js ? [
        js.wantedCollections && js.wantedCollections.length ? 'collections: ' + js.wantedCollections.join(', ') : null,
        js.wantedDids && js.wantedDids.length ? 'DIDs: ' + js.wantedDids.length : null,
        js.compress ? 'zstd' : null,
      ].filter(Boolean).join(' · ') || 'everything' : '—';
      return el('tr', {},
        el('td', { text: c.kind }), el('td', { text: c.remote_addr || '—' }), el('td', { text: c.user_agent || '—' }),
        el('td', { class: 'num', text: num(c.cursor) }), el('td', { class: 'num', text: num(c.lag) }),
        el('td', { class: 'num', text: num(c.events_consumed) }), el('td', { class: 'num', text: bytes(c.bytes_sent || 0) }),
        el('td', { title: c.connected_at, text: ago(c.connected_at) }), el('td', { text: filters }));
    }));
    if (!list.length) $('consumers').append(el('tr', {}, el('td', { colspan: 9, class: 'muted', text: 'No consumers connected.' })));
  }

  async function loadBans() {
    let r;
    try { r = await api('/admin/subs/listDomainBans'); } catch (e) { return failed(e); }
    const bans = (r && r.banned_domains) || [];
    $('bans').replaceChildren(...bans.map((d) => el('li', {}, el('span', { text: d }),
      el('button', { type: 'button', class: 'small quiet', text: 'Unban', 'data-domain': d }))));
    if (!bans.length) $('bans').append(el('li', { class: 'muted', text: 'No domain is banned.' }));
  }
  async function banDomain(ev) {
    ev.preventDefault();
    const domain = $('ban-domain').value.trim();
    if (!domain || !await ask('Ban ' + domain + '?', 'Hosts under it are refused and disconnected.', { danger: true })) return;
    try { await api('/admin/subs/banDomain', { body: { Domain: domain } }); } catch (e) { return failed(e); }
    $('ban-domain').value = '';
    notice(domain + ' is banned.');
    loadBans();
  }
  async function unbanDomain(ev) {
    const b = ev.target.closest('button[data-domain]');
    if (!b) return;
    const domain = b.dataset.domain;
    if (!await ask('Unban ' + domain + '?', 'Hosts under it may be crawled again.')) return;
    try { await api('/admin/subs/unbanDomain', { body: { Domain: domain } }); } catch (e) { return failed(e); }
    notice(domain + ' is no longer banned.');
    loadBans();
  }

  let collections = [];
  async function loadCollections() {
    let r, b;
    try {
      [r, b] = await Promise.all([api('/admin/collections/list'), api('/admin/collections/backfill')]);
    } catch (e) { return failed(e); }
    collections = Object.entries((r && r.collections) || {}).sort((x, y) => y[1] - x[1]);
    pairs($('backfill'), [
      ['Backfill', b.running ? 'running' : 'idle'], ['From', b.host], ['Last error', b.lastError],
    ]);
    showCollections();
  }
  function showCollections() {
    const q = $('collection-filter').value.trim().toLowerCase();
    const shown = collections.filter(([c]) => !q || c.toLowerCase().includes(q));
    $('collection-count').textContent = `${num(shown.length)} of ${num(collections.length)} collections` + (shown.length > 500 ? ' (first 500 shown)' : '');
    $('collections').replaceChildren(...shown.slice(0, 500).map(([c, n]) => el('tr', {}, el('td', { text: c }), el('td', { class: 'num', text: num(n) }))));
  }

  const LOADERS = {
    overview: loadOverview, hosts: loadHosts, accounts: () => {}, consumers: loadConsumers,
    bans: loadBans, collections: loadCollections,
  };

  function debounce(f, ms) {
    let t;
    return () => { clearTimeout(t); t = setTimeout(f, ms); };
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', login);
    $('logout').addEventListener('click', () => logout());
    window.addEventListener('hashchange', route);
    $('host-filter').addEventListener('input', debounce(applyHosts, 80));
    $('host-status').addEventListener('change', applyHosts);
    $('host-sort').addEventListener('change', applyHosts);
    $('hosts-refresh').addEventListener('click', loadHosts);
    $('hosts-viewport').addEventListener('scroll', () => requestAnimationFrame(renderHostRows), { passive: true });
    $('hosts-rows').addEventListener('click', hostAction);
    $('crawl-form').addEventListener('submit', requestCrawl);
    $('account-form').addEventListener('submit', lookUp);
    $('takedown').addEventListener('click', () => takeDown(false));
    $('reverse').addEventListener('click', () => takeDown(true));
    $('consumers-refresh').addEventListener('click', loadConsumers);
    $('ban-form').addEventListener('submit', banDomain);
    $('bans').addEventListener('click', unbanDomain);
    $('collection-filter').addEventListener('input', debounce(showCollections, 80));
    window.addEventListener('resize', debounce(() => {
      if (current === 'hosts') applyHosts();
      if (current === 'overview') loadOverview();
    }, 100));
    if (password) start(); else logout();
  });
})();
