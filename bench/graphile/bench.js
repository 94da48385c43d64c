// graphile-worker claim + complete throughput, batched mode: N no-op jobs,
// concurrency 24, localQueue 500, batched completions.
const { run, makeWorkerUtils, Logger } = require("graphile-worker");
// Per-job log lines would slow it down: keep only warnings and errors.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(message);
});
const N = parseInt(process.argv[2] || "50000", 10);
const connectionString = process.argv[3] || "postgres://postgres@127.0.0.1:5432/test";
const schema = "gw_bench_" + process.pid;
const preset = {
  worker: {
    connectionString,
    schema,
    concurrentJobs: 24,
    maxPoolSize: 25,
    pollInterval: 1000,
    localQueue: { size: 500 },
    completeJobBatchDelay: 0,
    failJobBatchDelay: 0,
  },
};
(async () => {
  const utils = await makeWorkerUtils({ connectionString, schema, logger });
  await utils.migrate();
  await utils.withPgClient((c) =>
    c.query(
      `select ${schema}.add_jobs(array(select json_populate_record(null::${schema}.job_spec, json_build_object('identifier', 'noop', 'payload', '{}'::json)) from generate_series(1, $1)))`,
      [N],
    ),
  );
  let done = 0;
  let resolveAll;
  const all = new Promise((r) => (resolveAll = r));
  const started = process.hrtime.bigint();
  const runner = await run({
    preset,
    taskList: { noop: async () => {} },
    logger,
    noHandleSignals: true,
  });
  runner.events.on("job:complete", () => {
    done += 1;
    if (done === N) resolveAll();
  });
  await all;
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  await runner.stop();
  await utils.withPgClient((c) => c.query(`drop schema ${schema} cascade`));
  await utils.release();
  console.log(JSON.stringify({ tool: "graphile-worker", jobs: N, seconds: secs, jobs_per_s: N / secs }));
  process.exit(0);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
