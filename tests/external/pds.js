// Bluesky's reference PDS, configured from PDS_* environment variables (see run.sh).
const { PDS, envToCfg, envToSecrets, readEnv } = require('@atproto/pds');

const main = async () => {
  const env = readEnv();
  const pds = await PDS.create(envToCfg(env), envToSecrets(env));
  await pds.start();
  console.log('pds listening on', env.port);
};
main().catch((e) => { console.error(e); process.exit(1); });
