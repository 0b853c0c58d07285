// Reads the relay's Jetstream (/subscribe) with a published client, @skyware/jetstream, filtered
// to posts, and prints one JSON line: counts by kind and collection, and errors. Exit status 1
// when a commit outside the filter arrived, an error occurred, or no post arrived.
const { Jetstream } = require('@skyware/jetstream');
const WebSocket = require('ws');

const [endpoint, seconds] = [process.argv[2], Number(process.argv[3] || 10)];
const counts = {};
const collections = {};
const errors = [];
const bump = (m, k) => { m[k] = (m[k] || 0) + 1; };
const js = new Jetstream({ ws: WebSocket, endpoint, wantedCollections: ['app.bsky.feed.post'] });
js.on('commit', (e) => { bump(counts, 'commit'); bump(collections, e.commit.collection); });
js.on('identity', () => bump(counts, 'identity'));
js.on('account', () => bump(counts, 'account'));
js.on('error', (e) => errors.push(String(e && e.message).slice(0, 200)));
js.start();
setTimeout(() => {
  js.close();
  const strays = Object.keys(collections).filter((c) => c !== 'app.bsky.feed.post');
  console.log(JSON.stringify({ endpoint, counts, collections, errors: errors.length, sample: errors.slice(0, 3) }));
  process.exit(errors.length === 0 && strays.length === 0 && (collections['app.bsky.feed.post'] || 0) > 0 ? 0 : 1);
}, seconds * 1000);
