// Creates accounts on the reference PDS and writes a mix of posts, follows, deletions and profile
// updates through its XRPC API. Prints the new DIDs, space separated.
const base = process.env.PDS_URL || 'http://localhost:2583';

const call = async (nsid, body, jwt) => {
  const r = await fetch(`${base}/xrpc/${nsid}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(jwt ? { authorization: `Bearer ${jwt}` } : {}) },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${nsid} ${r.status} ${text}`);
  return text ? JSON.parse(text) : {};
};

const main = async () => {
  const n = Number(process.argv[2] || 5);
  const writes = Number(process.argv[3] || 60);
  const stamp = Date.now() % 100000;
  const accounts = [];
  for (let i = 0; i < n; i++) {
    accounts.push(await call('com.atproto.server.createAccount', {
      email: `u${i}-${stamp}@example.com`, handle: `u${i}-${stamp}.test`, password: 'interop-pw',
    }));
  }
  const posts = accounts.map(() => []);
  for (let w = 0; w < writes; w++) {
    const i = w % n;
    const a = accounts[i];
    const createdAt = new Date().toISOString();
    const roll = w % 10;
    if (roll < 4) {
      const r = await call('com.atproto.repo.createRecord', {
        repo: a.did, collection: 'app.bsky.feed.post',
        record: { $type: 'app.bsky.feed.post', text: `post ${w}`, createdAt },
      }, a.accessJwt);
      posts[i].push(r.uri);
    } else if (roll < 7) {
      await call('com.atproto.repo.createRecord', {
        repo: a.did, collection: 'app.bsky.graph.follow',
        record: { $type: 'app.bsky.graph.follow', subject: accounts[(i + 1) % n].did, createdAt },
      }, a.accessJwt);
    } else if (roll < 9 && posts[i].length > 0) {
      const rkey = posts[i].shift().split('/').pop();
      await call('com.atproto.repo.deleteRecord', { repo: a.did, collection: 'app.bsky.feed.post', rkey }, a.accessJwt);
    } else {
      await call('com.atproto.repo.putRecord', {
        repo: a.did, collection: 'app.bsky.actor.profile', rkey: 'self',
        record: { $type: 'app.bsky.actor.profile', displayName: `user ${i} ${w}` },
      }, a.accessJwt);
    }
  }
  console.log(accounts.map((a) => a.did).join(' '));
};
main().catch((e) => { console.error(e); process.exit(1); });
