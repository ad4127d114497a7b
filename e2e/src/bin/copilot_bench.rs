//! `make bench`, third part: a copilot's retrieval on the local test bed's
//! Postgres and pgvector.
//!
//! The manufacturing example's partner-operations copilot gets its objects
//! from the server's own statements (`schema_ddl_with_hnsw`, with the
//! example's HNSW parameters) in a scratch schema owned by a scratch role,
//! both dropped at the end. `--chunks` chunks of random unit vectors, spread
//! over the approved document sources, are loaded by binary COPY before the
//! HNSW index is built, and the two are timed apart. Then `--queries` random
//! query vectors go through the retrieval function as the server calls it
//! (`SELECT … FROM retrieve($1::text::extensions.vector, 10)`): latency p50
//! and p99 at pgvector's default `hnsw.ef_search` (40), at 100 and at 200,
//! and recall@10 against the same function planned without index scans (an
//! exact scan).
//!
//! Vectors drawn uniformly from the unit sphere are the worst case for
//! HNSW: in 1536 dimensions every distance is close to every other and the
//! graph has nothing to follow, so recall is low at any `ef_search`.
//! Embeddings of text lie close to a space of far fewer dimensions;
//! `--latent N` draws the chunks and queries from a random N-dimensional
//! subspace plus a little noise instead: the fewer its dimensions, the
//! higher the recall.
//!
//! Usage: `copilot_bench [--chunks N] [--dimensions N] [--queries N]
//! [--latent N] [--maintenance-work-mem SIZE] [--seed N]`; defaults 100,000
//! chunks, 1536 dimensions (the example's), 200 queries, uniform vectors,
//! `1GB`.

use std::collections::HashSet;
use std::io::Cursor;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{SinkExt, StreamExt};
use partnerplane::api::CopilotDeployment;
use partnerplane::api::copilot::Distance;
use partnerplane::copilot::controller::objects::{TenantView, server_config};
use partnerplane::copilot::names::CopilotNames;
use partnerplane::copilot::server::chunk::TARGET;
use partnerplane::copilot::server::ddl::{document_sources, index_name, schema_ddl_with_hnsw};
use partnerplane::copilot::server::model::vector_text;
use partnerplane::copilot::server_config::{DatabaseCredentials, ModelKey};
use partnerplane::naming::{CREDENTIALS_SECRET, quote_ident};
use partnerplane_e2e::report::{percentile, thousands};
use partnerplane_e2e::{Testbed, load_documents, repo_root, unique_name};
use tokio_postgres::{AsyncMessage, Client, NoTls};

const EXAMPLE: &str = "examples/manufacturing-service-network/partner-operations-copilot.yaml";
/// Chunks retrieved per query, as the server asks.
const K: i32 = 10;
/// pgvector's default `hnsw.ef_search` first, then two wider searches.
const EF_SEARCH: [i32; 3] = [40, 100, 200];
/// Chunks per document.
const CHUNKS_PER_DOCUMENT: usize = 20;
/// Rows per COPY message.
const COPY_BATCH: usize = 256;
/// How often the index build's progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

struct Options {
    chunks: usize,
    dimensions: i32,
    queries: usize,
    maintenance_work_mem: String,
    seed: u64,
    latent: Option<usize>,
}

impl Options {
    fn parse() -> anyhow::Result<Self> {
        let mut options = Self {
            chunks: 100_000,
            dimensions: 1536,
            queries: 200,
            maintenance_work_mem: "1GB".into(),
            seed: 1,
            latent: None,
        };
        let usage = "usage: copilot_bench [--chunks N] [--dimensions N] [--queries N] \
                     [--latent N] [--maintenance-work-mem SIZE] [--seed N]";
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut text = || args.next().with_context(|| format!("{arg} needs a value"));
            let number = |text: String| -> anyhow::Result<u64> {
                text.replace([',', '_'], "")
                    .parse()
                    .with_context(|| format!("{arg} takes a number, not {text}"))
            };
            match arg.as_str() {
                "--chunks" => options.chunks = number(text()?)? as usize,
                "--dimensions" => options.dimensions = number(text()?)? as i32,
                "--queries" => options.queries = number(text()?)? as usize,
                "--maintenance-work-mem" => options.maintenance_work_mem = text()?,
                "--seed" => options.seed = number(text()?)?,
                "--latent" => options.latent = Some(number(text()?)? as usize),
                other => bail!("unknown argument {other}; {usage}"),
            }
        }
        anyhow::ensure!(options.chunks >= 1_000, "--chunks must be at least 1000");
        anyhow::ensure!(
            (1..=2000).contains(&options.dimensions),
            "--dimensions must be 1–2000 (pgvector's HNSW limit)"
        );
        anyhow::ensure!(options.queries >= 1, "--queries must be at least 1");
        anyhow::ensure!(
            options
                .latent
                .is_none_or(|n| n >= 1 && n <= options.dimensions as usize),
            "--latent must be 1 to --dimensions"
        );
        anyhow::ensure!(
            options
                .maintenance_work_mem
                .chars()
                .all(|c| c.is_ascii_alphanumeric()),
            "--maintenance-work-mem takes a size such as 1GB"
        );
        Ok(options)
    }
}

/// xoshiro256** seeded by splitmix64, with Box–Muller normals.
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self([next(), next(), next(), next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) * (1.0 / (1u64 << 53) as f64)
    }

    /// `n` standard normal values.
    fn normals(&mut self, n: usize, out: &mut Vec<f32>) {
        out.clear();
        while out.len() < n {
            let radius = (-2.0 * self.unit().ln()).sqrt();
            let angle = std::f64::consts::TAU * self.unit();
            out.push((radius * angle.cos()) as f32);
            if out.len() < n {
                out.push((radius * angle.sin()) as f32);
            }
        }
    }
}

/// Per-coordinate noise added to vectors of a latent subspace, against
/// unit variance of the subspace's part.
const LATENT_NOISE: f32 = 0.1;

/// Draws the stored and the query vectors: uniformly from the unit sphere,
/// or with `--latent N` from an N-dimensional subspace (a fixed random
/// basis) plus a little noise, normalized, as embeddings of text lie close
/// to a space of far fewer dimensions than they have.
struct Vectors {
    dimensions: usize,
    /// `N` rows of `dimensions`, entries of variance 1/N.
    basis: Option<Vec<f32>>,
    latent: Vec<f32>,
}

impl Vectors {
    fn new(dimensions: usize, latent: Option<usize>, rng: &mut Rng) -> Self {
        let basis = latent.map(|n| {
            let mut basis = Vec::new();
            rng.normals(n * dimensions, &mut basis);
            let scale = 1.0 / (n as f32).sqrt();
            basis.iter_mut().for_each(|x| *x *= scale);
            basis
        });
        Self {
            dimensions,
            basis,
            latent: Vec::new(),
        }
    }

    fn draw(&mut self, rng: &mut Rng, out: &mut Vec<f32>) {
        let Self {
            dimensions,
            basis,
            latent,
        } = self;
        rng.normals(*dimensions, out);
        if let Some(basis) = basis {
            rng.normals(basis.len() / *dimensions, latent);
            out.iter_mut().for_each(|x| *x *= LATENT_NOISE);
            for (z, row) in latent.iter().zip(basis.chunks_exact(*dimensions)) {
                for (x, a) in out.iter_mut().zip(row) {
                    *x += z * a;
                }
            }
        }
        let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
        out.iter_mut().for_each(|x| *x /= norm);
    }
}

/// What the figures were measured on.
struct Machine {
    cores: usize,
    memory_gib: f64,
    cpu: String,
    postgres: String,
    pgvector: String,
    shared_buffers: String,
    parallel_maintenance_workers: String,
    load_average: String,
}

impl Machine {
    async fn read(client: &Client) -> anyhow::Result<Self> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown CPU".into(), |(_, v)| v.trim().to_string());
        let row = client
            .query_one(
                "SELECT current_setting('server_version'), \
                 (SELECT extversion FROM pg_extension WHERE extname = 'vector'), \
                 current_setting('shared_buffers'), \
                 current_setting('max_parallel_maintenance_workers')",
                &[],
            )
            .await?;
        Ok(Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: memory_kib / (1024.0 * 1024.0),
            cpu,
            postgres: row.get(0),
            pgvector: row
                .get::<_, Option<String>>(1)
                .context("pgvector is not installed")?,
            shared_buffers: row.get(2),
            parallel_maintenance_workers: row.get(3),
            load_average: load_average(),
        })
    }
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A connection whose notices (pgvector's "graph no longer fits into
/// maintenance_work_mem", say) are printed.
async fn connect(dsn: &str) -> anyhow::Result<Client> {
    let (client, mut connection) = tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notice(notice))
                    if !notice.message().starts_with("drop cascades") =>
                {
                    println!("  postgres {}: {}", notice.severity(), notice.message())
                }
                Ok(_) => {}
                Err(error) => {
                    eprintln!("postgres connection: {:#}", anyhow::Error::from(error));
                    break;
                }
            }
        }
    });
    Ok(client)
}

/// The example copilot's configuration with its knowledge in `schema`.
fn example_config(
    schema: &str,
    dimensions: i32,
) -> anyhow::Result<(
    partnerplane::copilot::server_config::ServerConfig,
    partnerplane::api::copilot::HnswParameters,
)> {
    let manifest = load_documents(&repo_root().join(EXAMPLE))?
        .into_iter()
        .find(|d| d["kind"] == "CopilotDeployment")
        .context("no CopilotDeployment in the example")?;
    let mut copilot: CopilotDeployment = serde_json::from_value(manifest)?;
    copilot.spec.knowledge.index.dimensions = dimensions;
    let names = CopilotNames::new(
        copilot.metadata.namespace.as_deref().unwrap_or_default(),
        copilot.metadata.name.as_deref().unwrap_or_default(),
    );
    let tenant = TenantView {
        schema: schema.to_string(),
        credentials_secret: Some(CREDENTIALS_SECRET.to_string()),
        ..Default::default()
    };
    let config = server_config(
        &copilot,
        &names,
        &tenant,
        ModelKey::Env,
        DatabaseCredentials::Env,
        &[],
    );
    Ok((config, copilot.spec.knowledge.index.hnsw))
}

fn distance_name(distance: Distance) -> &'static str {
    match distance {
        Distance::Cosine => "cosine",
        Distance::L2 => "L2",
        Distance::InnerProduct => "inner product",
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: i64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A text column of a binary COPY row.
fn copy_text(buffer: &mut Vec<u8>, text: &str) {
    buffer.extend_from_slice(&(text.len() as i32).to_be_bytes());
    buffer.extend_from_slice(text.as_bytes());
}

/// Loads `chunks` rows of `vectors` into `knowledge`, round-robin
/// over `sources`, by one binary COPY.
async fn load(
    client: &Client,
    knowledge: &str,
    sources: &[&str],
    chunks: usize,
    vectors: &mut Vectors,
    rng: &mut Rng,
) -> anyhow::Result<()> {
    let dimensions = vectors.dimensions;
    let sink = client
        .copy_in::<_, Cursor<Vec<u8>>>(&format!(
            "COPY {knowledge} (source, document, chunk, content, embedding) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    futures::pin_mut!(sink);
    let filler = "Service report: the partner confirmed the on-site visit, replaced the \
                  failed drive unit and closed the ticket within the agreed resolution time. ";
    let mut vector = Vec::with_capacity(dimensions);
    let mut buffer = Vec::new();
    buffer.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buffer.extend_from_slice(&0i32.to_be_bytes());
    buffer.extend_from_slice(&0i32.to_be_bytes());
    let tenth = (chunks / 10).max(1);
    let started = Instant::now();
    for i in 0..chunks {
        let source = sources[i % sources.len()];
        let document = format!("{source}-{:06}", i / (CHUNKS_PER_DOCUMENT * sources.len()));
        let chunk = (i / sources.len()) % CHUNKS_PER_DOCUMENT;
        let mut content = format!("{document} #{chunk}. ");
        while content.len() < TARGET {
            content.push_str(filler);
        }
        content.truncate(TARGET);
        vectors.draw(rng, &mut vector);
        buffer.extend_from_slice(&5i16.to_be_bytes());
        copy_text(&mut buffer, source);
        copy_text(&mut buffer, &document);
        buffer.extend_from_slice(&4i32.to_be_bytes());
        buffer.extend_from_slice(&(chunk as i32).to_be_bytes());
        copy_text(&mut buffer, &content);
        // pgvector's binary form: dimensions, an unused int16, the floats.
        buffer.extend_from_slice(&(4 + 4 * dimensions as i32).to_be_bytes());
        buffer.extend_from_slice(&(dimensions as i16).to_be_bytes());
        buffer.extend_from_slice(&0i16.to_be_bytes());
        for x in &vector {
            buffer.extend_from_slice(&x.to_be_bytes());
        }
        if (i + 1) % COPY_BATCH == 0 {
            sink.feed(Cursor::new(std::mem::take(&mut buffer))).await?;
        }
        if (i + 1) % tenth == 0 {
            println!(
                "  loaded {} chunks in {:.1} s",
                thousands(i + 1),
                started.elapsed().as_secs_f64()
            );
        }
    }
    buffer.extend_from_slice(&(-1i16).to_be_bytes());
    sink.feed(Cursor::new(buffer)).await?;
    let rows = sink.finish().await?;
    anyhow::ensure!(
        rows == chunks as u64,
        "COPY wrote {rows} rows, not {chunks}"
    );
    Ok(())
}

/// Prints the index build's phase and tuples every [`PROGRESS_EVERY`]
/// until dropped.
fn watch_build(dsn: String, pid: i32) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(client) = connect(&dsn).await else {
            return;
        };
        let started = Instant::now();
        loop {
            tokio::time::sleep(PROGRESS_EVERY).await;
            let row = client
                .query_opt(
                    "SELECT phase, tuples_done, tuples_total FROM pg_stat_progress_create_index \
                     WHERE pid = $1",
                    &[&pid],
                )
                .await;
            if let Ok(Some(row)) = row {
                let (phase, done, total): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
                println!(
                    "  index build {:.0} s: {phase}, {} of {} tuples",
                    started.elapsed().as_secs_f64(),
                    thousands(done as usize),
                    thousands(total as usize)
                );
            }
        }
    })
}

/// One pass of the queries through `sql`, each sent as the server sends it
/// (parse, bind, execute, so each is planned for its own vector): each
/// query's latency and returned ids.
async fn run_queries(
    client: &Client,
    sql: &str,
    queries: &[String],
) -> anyhow::Result<(Vec<Duration>, Vec<Vec<i64>>)> {
    let mut latencies = Vec::with_capacity(queries.len());
    let mut results = Vec::with_capacity(queries.len());
    for query in queries {
        let started = Instant::now();
        let rows = client.query(sql, &[query, &K]).await?;
        latencies.push(started.elapsed());
        results.push(rows.iter().map(|r| r.get::<_, i64>("id")).collect());
    }
    latencies.sort();
    Ok((latencies, results))
}

/// The plan of the retrieval function for `query`, without the vector.
async fn plan(client: &Client, retrieve: &str, query: &str) -> anyhow::Result<String> {
    Ok(client
        .query(
            &format!(
                "EXPLAIN (COSTS OFF) SELECT * FROM {retrieve}($1::text::extensions.vector, $2::int)"
            ),
            &[&query, &K],
        )
        .await?
        .iter()
        .map(|r| {
            // Without the query vector's thousands of digits.
            let line: String = r.get(0);
            match line.find("'[") {
                Some(at) => format!("{}'[…]'", &line[..at]),
                None => line,
            }
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

struct Report {
    load: Duration,
    analyze: Duration,
    build: Duration,
    table_bytes: i64,
    index_bytes: i64,
    exact: Vec<Duration>,
    /// Per `ef_search`: whether the plan used the HNSW index, sorted
    /// latencies, mean and worst recall@10.
    searches: Vec<(i32, bool, Vec<Duration>, f64, f64)>,
}

async fn run(
    testbed: &Testbed,
    options: &Options,
    role: &str,
    bench_pid: &mut Option<i32>,
) -> anyhow::Result<Report> {
    let (config, hnsw) = example_config(role, options.dimensions)?;
    let db = &config.database;
    let schema = quote_ident(&db.schema);
    let knowledge = format!("{schema}.{}", quote_ident(&db.knowledge_table));
    let retrieve = format!("{schema}.{}", quote_ident(&db.retrieve_function));
    let index = index_name(&db.knowledge_table);
    let sources = document_sources(&config);
    anyhow::ensure!(
        !sources.is_empty(),
        "the example approves no document source"
    );
    let (build_index, other): (Vec<String>, Vec<String>) = schema_ddl_with_hnsw(&config, &hnsw)
        .into_iter()
        .partition(|s| s.contains("USING hnsw"));
    anyhow::ensure!(build_index.len() == 1, "expected one HNSW index statement");

    let client = connect(&testbed.pg_admin_dsn).await?;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    *bench_pid = Some(pid);
    client
        .batch_execute(&format!("SET ROLE {}", quote_ident(role)))
        .await?;
    for statement in &other {
        client.batch_execute(statement).await?;
    }

    println!(
        "loading {} chunks of {} dimensions into {knowledge} ({})",
        thousands(options.chunks),
        options.dimensions,
        sources.join(", ")
    );
    let mut rng = Rng::new(options.seed);
    let mut vectors = Vectors::new(options.dimensions as usize, options.latent, &mut rng);
    let started = Instant::now();
    load(
        &client,
        &knowledge,
        &sources,
        options.chunks,
        &mut vectors,
        &mut rng,
    )
    .await?;
    let load_time = started.elapsed();
    let started = Instant::now();
    client
        .batch_execute(&format!("VACUUM (ANALYZE) {knowledge}"))
        .await?;
    let analyze = started.elapsed();

    println!(
        "building {index} (m {}, ef_construction {}, maintenance_work_mem {})",
        hnsw.m, hnsw.ef_construction, options.maintenance_work_mem
    );
    client
        .batch_execute(&format!(
            "SET maintenance_work_mem = '{}'",
            options.maintenance_work_mem
        ))
        .await?;
    let watcher = watch_build(testbed.pg_admin_dsn.clone(), pid);
    let started = Instant::now();
    let built = client.batch_execute(&build_index[0]).await;
    let build = started.elapsed();
    watcher.abort();
    built?;
    client.batch_execute("RESET maintenance_work_mem").await?;
    let row = client
        .query_one(
            &format!(
                "SELECT pg_total_relation_size('{knowledge}'::regclass) - pg_indexes_size('{knowledge}'::regclass), \
                 pg_relation_size('{schema}.{}'::regclass)",
                quote_ident(&index)
            ),
            &[],
        )
        .await?;
    let (table_bytes, index_bytes): (i64, i64) = (row.get(0), row.get(1));
    println!(
        "loaded in {:.1} s, analyzed in {:.1} s, index built in {:.1} s",
        load_time.as_secs_f64(),
        analyze.as_secs_f64(),
        build.as_secs_f64()
    );

    let mut query_rng = Rng::new(options.seed ^ 0x5175_6572_7900);
    let mut vector = Vec::new();
    let queries: Vec<String> = (0..options.queries)
        .map(|_| {
            vectors.draw(&mut query_rng, &mut vector);
            vector_text(&vector)
        })
        .collect();
    let sql = format!("SELECT * FROM {retrieve}($1::text::extensions.vector, $2::int)");

    println!("exact scan of {} queries", queries.len());
    client.batch_execute("SET enable_indexscan = off").await?;
    let exact_plan = plan(&client, &retrieve, &queries[0]).await?;
    anyhow::ensure!(
        !exact_plan.contains(&index),
        "the exact scan still uses {index}:\n{exact_plan}"
    );
    let (exact, truth) = run_queries(&client, &sql, &queries).await?;
    client.batch_execute("RESET enable_indexscan").await?;
    anyhow::ensure!(
        truth.iter().all(|ids| ids.len() == K as usize),
        "the exact scan returned fewer than {K} chunks"
    );

    let mut searches = Vec::new();
    for ef in EF_SEARCH {
        client
            .batch_execute(&format!("SET hnsw.ef_search = {ef}"))
            .await?;
        let index_plan = plan(&client, &retrieve, &queries[0]).await?;
        let uses_index = index_plan.contains(&index);
        if !uses_index {
            println!("  ef_search {ef}: the planner does not use {index}:\n{index_plan}");
        }
        // One untimed pass, so every figure is of a warm cache.
        run_queries(&client, &sql, &queries).await?;
        let (latencies, results) = run_queries(&client, &sql, &queries).await?;
        let recalls: Vec<f64> = results
            .iter()
            .zip(&truth)
            .map(|(got, want)| {
                let want: HashSet<_> = want.iter().collect();
                got.iter().filter(|id| want.contains(id)).count() as f64 / want.len() as f64
            })
            .collect();
        let mean = recalls.iter().sum::<f64>() / recalls.len() as f64;
        let worst = recalls.iter().copied().fold(1.0, f64::min);
        println!(
            "  ef_search {ef}: p50 {:.2} ms, recall@{K} {mean:.3}",
            ms(percentile(&latencies, 0.5))
        );
        searches.push((ef, uses_index, latencies, mean, worst));
    }
    client.batch_execute("RESET hnsw.ef_search").await?;
    Ok(Report {
        load: load_time,
        analyze,
        build,
        table_bytes,
        index_bytes,
        exact,
        searches,
    })
}

/// Drops the scratch schema and role, on a new connection (the bench's
/// may be gone), first ending the bench's backend when it is given.
/// Retried for a minute, in case Postgres is restarting.
async fn drop_scratch(dsn: &str, role: &str, bench_pid: Option<i32>) -> anyhow::Result<()> {
    let quoted = quote_ident(role);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let admin = connect(dsn).await?;
            if let Some(pid) = bench_pid {
                admin
                    .execute(
                        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE pid = $1",
                        &[&pid],
                    )
                    .await?;
            }
            admin
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {quoted} CASCADE; DROP OWNED BY {quoted}; \
                     DROP ROLE {quoted}"
                ))
                .await?;
            anyhow::Ok(())
        }
        .await;
        match attempt {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() < deadline => {
                eprintln!("dropping {role}: {error:#}; trying again");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    let testbed = Testbed::load()?;
    let admin = connect(&testbed.pg_admin_dsn).await?;
    let machine = Machine::read(&admin).await?;
    let role = unique_name("copilot_bench").replace('-', "_");
    let quoted = quote_ident(&role);
    println!(
        "partnerplane copilot bench: {} chunks × {} dimensions, {} queries; scratch role and schema {role}",
        thousands(options.chunks),
        options.dimensions,
        options.queries
    );
    admin
        .batch_execute(&format!(
            "CREATE ROLE {quoted} NOLOGIN; \
             CREATE SCHEMA {quoted} AUTHORIZATION {quoted}; \
             GRANT USAGE ON SCHEMA extensions TO {quoted}"
        ))
        .await?;

    let mut bench_pid = None;
    let outcome = tokio::select! {
        outcome = run(&testbed, &options, &role, &mut bench_pid) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    drop(admin);
    let dropped = drop_scratch(
        &testbed.pg_admin_dsn,
        &role,
        bench_pid.filter(|_| outcome.is_err()),
    )
    .await
    .with_context(|| format!("dropping the scratch schema and role {role}"));
    let report = outcome?;
    dropped?;

    let (config, hnsw) = example_config(&role, options.dimensions)?;
    println!();
    println!(
        "machine: {} cores (nproc), {:.1} GiB memory, {}, load average {} at the start, {} at the end; \
         PostgreSQL {} on the same machine, pgvector {}, shared_buffers {}, \
         max_parallel_maintenance_workers {}",
        machine.cores,
        machine.memory_gib,
        machine.cpu,
        machine.load_average,
        load_average(),
        machine.postgres,
        machine.pgvector,
        machine.shared_buffers,
        machine.parallel_maintenance_workers
    );
    println!(
        "knowledge: {} chunks × {} dimensions ({}), {}, HNSW m {} ef_construction {}, \
         {} approved document sources; {} random queries, k {K}, one connection, after one untimed pass",
        thousands(options.chunks),
        options.dimensions,
        options
            .latent
            .map_or("random unit vectors".to_string(), |n| format!(
                "unit vectors of a random {n}-dimensional subspace, noise {LATENT_NOISE}"
            )),
        distance_name(config.database.distance),
        hnsw.m,
        hnsw.ef_construction,
        document_sources(&config).len(),
        options.queries
    );
    println!();
    let rate = options.chunks as f64 / report.load.as_secs_f64();
    let lines = [
        (
            "load (binary COPY)".to_string(),
            format!(
                "{:.1} s ({} chunks/s)",
                report.load.as_secs_f64(),
                thousands(rate as usize)
            ),
        ),
        (
            "VACUUM ANALYZE".to_string(),
            format!("{:.1} s", report.analyze.as_secs_f64()),
        ),
        (
            format!(
                "HNSW index build (maintenance_work_mem {})",
                options.maintenance_work_mem
            ),
            format!("{:.1} s", report.build.as_secs_f64()),
        ),
        (
            "table size (with TOAST)".to_string(),
            mib(report.table_bytes),
        ),
        ("HNSW index size".to_string(), mib(report.index_bytes)),
        (
            "exact scan p50 / p99".to_string(),
            format!(
                "{:.1} / {:.1} ms",
                ms(percentile(&report.exact, 0.5)),
                ms(percentile(&report.exact, 0.99))
            ),
        ),
    ];
    let width = lines
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(0);
    for (name, value) in &lines {
        println!("{name:<width$}  {value}");
    }
    println!();
    println!(
        "{:<14}  {:<16}  {:>8}  {:>8}  {:>9}  {:>11}",
        "hnsw.ef_search", "plan", "p50 ms", "p99 ms", "recall@10", "worst query"
    );
    println!("{}", "-".repeat(74));
    for (ef, uses_index, latencies, mean, worst) in &report.searches {
        let label = if *ef == EF_SEARCH[0] {
            format!("{ef} (default)")
        } else {
            ef.to_string()
        };
        println!(
            "{label:<14}  {:<16}  {:>8.2}  {:>8.2}  {:>9.3}  {:>11.1}",
            if *uses_index {
                "HNSW index scan"
            } else {
                "seq scan + sort"
            },
            ms(percentile(latencies, 0.5)),
            ms(percentile(latencies, 0.99)),
            mean,
            worst
        );
    }
    Ok(())
}
