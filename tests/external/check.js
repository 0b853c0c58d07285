// Reads a firehose from seq 0 with Bluesky's own verifying consumer (@atproto/sync, authenticated
// commits: it checks every signature and MST proof itself, with keys from the given PLC directory)
// and prints one JSON line: event counts, counts for the DIDs in $DIDS, and errors.
// Exit status 1 when any event failed verification or nothing arrived.
// START=live: no saved cursor, as a fresh consumer starts (the client then sends `?cursor=`).
const { Firehose, MemoryRunner } = require('@atproto/sync');
const { IdResolver } = require('@atproto/identity');

const [service, plcUrl, seconds] = [process.argv[2], process.argv[3], Number(process.argv[4] || 20)];
const watched = new Set((process.env.DIDS || '').split(/\s+/).filter(Boolean));
const counts = {};
const watchedCounts = {};
const errors = [];
const bump = (m, k) => { m[k] = (m[k] || 0) + 1; };

const firehose = new Firehose({
  idResolver: new IdResolver({ plcUrl }),
  service,
  runner: new MemoryRunner(process.env.START === 'live' ? {} : { startCursor: 0 }),
  unauthenticatedCommits: false,
  // Simulated and .test handles have no DNS or well-known record to check.
  unauthenticatedHandles: true,
  handleEvent: async (evt) => {
    bump(counts, evt.event);
    if (watched.has(evt.did)) bump(watchedCounts, evt.event);
  },
  onError: (err) => {
    errors.push(String(err && `${err.message} ${err.cause || ''}`).slice(0, 300));
  },
});
firehose.start();
setTimeout(async () => {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  console.log(JSON.stringify({ service, total, counts, watched: watchedCounts, errors: errors.length, sample: errors.slice(0, 5) }));
  await firehose.destroy();
  process.exit(errors.length === 0 && total > 0 ? 0 : 1);
}, seconds * 1000);
