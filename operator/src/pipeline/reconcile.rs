//! One pipeline's reconcile: find the tenant that owns its namespace, then,
//! when a refresh is due, make the source tables match the spec and bring
//! every metric up to date in one transaction run as the tenant's role;
//! record breach transitions in that same transaction; publish the results
//! to status, Events and Prometheus; wake the pipeline's deliveries
//! (`dispatch`) when there are new ones.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::civil::Date;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tokio_postgres::IsolationLevel;

use super::breach::{Evaluation, Transition};
use super::context::PipelineContext;
use super::error::Error;
use super::owner::{self, Owner, TenantDatabase};
use super::schedule::{self, Due};
use super::sql::{self, PipelineKey, RefreshReport, Target};
use super::status::{self as pstatus, MetricForecast, OBJECTIVES_MET, REFRESHED, SOURCES_READY};
use super::telemetry::PipelineLabels;
use super::{delivery, fairness, forecast, outbox};
use crate::api::conditions::{self, RECONCILING};
use crate::api::metric::Comparison;
use crate::api::pipeline::{MetricPipeline, MetricPipelineStatus};
use crate::rollup::{self, PartOutcome};

/// (partner, bucket) keys re-derived from raw rows on every refresh.
const SAMPLE_KEYS: usize = 4;
/// A statement that takes longer is cancelled by Postgres.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(300);
/// A refresh that takes longer in all is ended by the operator: the
/// tenant's own code may run in it and lift the statement timeout.
const REFRESH_DEADLINE: Duration = Duration::from_secs(3 * 300);
/// Setting this annotation to a new value (a timestamp, say) refreshes the
/// pipeline at once, like Flux's `reconcile.fluxcd.io/requestedAt`.
pub const REFRESH_REQUESTED: &str = "partnerplane.io/refresh-requested-at";
/// Transition Events of one refresh sent at the same time.
const EVENTS_AT_ONCE: usize = 8;
/// How soon a pipeline waiting on its tenant looks again (the tenant's own
/// changes also wake it).
pub(super) const TENANT_WAIT: Duration = Duration::from_secs(15);

/// Converges the pipeline toward its spec and refreshes it when due.
pub async fn apply(pipeline: Arc<MetricPipeline>, ctx: &PipelineContext) -> Result<Action, Error> {
    let previous = pipeline.status.clone().unwrap_or_default();
    // Suspended is settled whatever the tenant's state: a pipeline waiting
    // on its tenant would otherwise read as InProgress forever.
    if pipeline.spec.suspend {
        let status = MetricPipelineStatus {
            observed_generation: pipeline.metadata.generation,
            conditions: rollup::suspended(&previous.conditions, pipeline.metadata.generation),
            ..previous.clone()
        };
        write_status(&pipeline, &previous, status, ctx).await?;
        return Ok(Action::await_change());
    }
    ctx.deliveries.seen(&pipeline);
    // A namespace has one tenant: its turn is taken before anything is read.
    let Some(_turn) = ctx.turns.take(&pipeline.namespace().unwrap_or_default()) else {
        return Ok(Action::requeue(crate::context::jittered(
            fairness::BUSY_RETRY,
            &mut rand::rng(),
        )));
    };
    record_intent(&pipeline, &previous, ctx).await?;
    let db = match owner_of(&pipeline, ctx, false).await? {
        Owner::Tenant(db) => db,
        Owner::NotATenantNamespace(message) => {
            return settle(&pipeline, ctx, Error::NoTenant(message)).await;
        }
        Owner::TenantNotReady(message) => {
            return settle(&pipeline, ctx, Error::TenantNotReady(message)).await;
        }
    };
    if let Err(invalid) = sql::check(&pipeline.spec) {
        return settle(&pipeline, ctx, Error::Sql(invalid)).await;
    }
    let interval = schedule::parse_interval(&pipeline.spec.refresh_interval)
        .unwrap_or(Duration::from_secs(300));
    let refreshed_generation = conditions::find(&previous.conditions, REFRESHED)
        .filter(|c| c.status == "True")
        .and_then(|c| c.observed_generation);
    let requested = pipeline.annotations().get(REFRESH_REQUESTED).cloned();
    let due = if requested.is_some() && requested != previous.last_handled_refresh_request {
        Due::Now
    } else {
        schedule::refresh_due(
            previous.last_refresh_time.as_ref().map(|t| t.0),
            refreshed_generation,
            pipeline.metadata.generation,
            interval,
            Timestamp::now(),
        )
    };
    let next_refresh = match due {
        Due::In(wait) => wait,
        Due::Now => {
            let started = Instant::now();
            match refresh(&pipeline, &db, ctx).await {
                Ok(done) => {
                    if !done.transitions.is_empty() {
                        ctx.deliveries.wake(&pipeline);
                    }
                    let at = schedule::recorded(Timestamp::now());
                    publish_refresh(&pipeline, &db, &previous, done, at, started.elapsed(), ctx)
                        .await?;
                    // From the recorded second, as the next reconcile will see it.
                    match schedule::refresh_due(Some(at), None, None, interval, Timestamp::now()) {
                        Due::In(wait) => wait,
                        Due::Now => Duration::ZERO,
                    }
                }
                Err(failure) => return settle(&pipeline, ctx, failure).await,
            }
        }
    };
    Ok(Action::requeue(next_refresh))
}

/// Writes `Reconciling=True` for a generation not yet observed, before any
/// work on it, so that kstatus never reads an unprocessed change as Current.
async fn record_intent(
    pipeline: &MetricPipeline,
    previous: &MetricPipelineStatus,
    ctx: &PipelineContext,
) -> Result<(), Error> {
    let generation = pipeline.metadata.generation;
    if previous.observed_generation == generation {
        return Ok(());
    }
    let mut intent = previous.clone();
    intent.observed_generation = generation;
    conditions::upsert(
        &mut intent.conditions,
        conditions::new(
            RECONCILING,
            true,
            "Progressing",
            format!("refreshing generation {}", generation.unwrap_or_default()),
            generation,
        ),
    );
    patch_status(pipeline, &intent, ctx).await
}

/// The tenant owning the pipeline's namespace, from the namespace's marks
/// (cached, or read live) and the tenant itself.
pub(super) async fn owner_of(
    pipeline: &MetricPipeline,
    ctx: &PipelineContext,
    for_cleanup: bool,
) -> Result<Owner, Error> {
    let namespace = pipeline.namespace().unwrap_or_default();
    let (annotations, tenant) = owner::observe(&ctx.shared, &namespace).await?;
    Ok(owner::resolve(
        &namespace,
        annotations.as_ref(),
        tenant.as_ref(),
        for_cleanup,
    ))
}

/// What one refresh transaction produced.
struct Refreshed {
    report: RefreshReport,
    source_tables: Vec<String>,
    transitions: Vec<Transition>,
    forecasts: BTreeMap<String, MetricForecast>,
    /// Schema repairs made before the refresh (`Plan::repairs`).
    repairs: Vec<String>,
}

pub(super) fn target_of(db: &TenantDatabase) -> Target {
    Target {
        schema: db.schema.clone(),
        role: db.role.clone(),
    }
}

pub(super) fn key_of(pipeline: &MetricPipeline) -> PipelineKey {
    PipelineKey {
        namespace: pipeline.namespace().unwrap_or_default(),
        name: pipeline.name_any(),
        uid: pipeline.uid().unwrap_or_default(),
    }
}

/// Opens a transaction in a session of the tenant's own login
/// ([`TenantDatabase::session`]): nothing in it can reach another tenant's
/// schema.
pub(super) async fn as_tenant(
    conn: &mut tokio_postgres::Client,
    isolation: IsolationLevel,
) -> Result<tokio_postgres::Transaction<'_>, Error> {
    let tx = conn
        .build_transaction()
        .isolation_level(isolation)
        .start()
        .await?;
    // The login's own settings, which the tenant may change, must not
    // change how values are printed and read back.
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {}; SET LOCAL DateStyle = 'ISO, MDY'; \
         SET LOCAL IntervalStyle = 'postgres'; SET LOCAL TimeZone = 'UTC'",
        STATEMENT_TIMEOUT.as_millis()
    ))
    .await?;
    Ok(tx)
}

async fn refresh(
    pipeline: &MetricPipeline,
    db: &TenantDatabase,
    ctx: &PipelineContext,
) -> Result<Refreshed, Error> {
    let mut conn = db.session(&ctx.shared, &ctx.postgres).await?;
    match tokio::time::timeout(REFRESH_DEADLINE, refresh_in(pipeline, db, &mut conn)).await {
        Ok(Ok(done)) => {
            conn.release();
            Ok(done)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => {
            ctx.postgres.terminate(&db.backend, conn).await;
            Err(Error::TimedOut(REFRESH_DEADLINE))
        }
    }
}

async fn refresh_in(
    pipeline: &MetricPipeline,
    db: &TenantDatabase,
    conn: &mut tokio_postgres::Client,
) -> Result<Refreshed, Error> {
    let spec = &pipeline.spec;
    let (target, key) = (target_of(db), key_of(pipeline));
    let tx = as_tenant(conn, IsolationLevel::RepeatableRead).await?;
    let ensured = sql::ensure(&tx, &target, &key, spec).await?;
    outbox::ensure_tables(&tx, &target.schema, &key).await?;
    let report = sql::refresh(&tx, &target, &key, spec, SAMPLE_KEYS).await?;
    let forecasts = forecasts(&tx, &target, &key, pipeline, &report).await?;
    let evaluations = evaluations(pipeline, &report);
    let urls = delivery::targets(spec);
    let transitions = outbox::record(
        &tx,
        &target.schema,
        &key,
        &evaluations,
        &urls,
        Timestamp::now(),
    )
    .await?;
    tx.commit().await?;
    Ok(Refreshed {
        report,
        source_tables: ensured.source_tables,
        repairs: ensured.repairs,
        transitions,
        forecasts,
    })
}

/// Breach evaluations: each metric over all partners, its worst partners
/// (a partner opens a breach only while among them), and every partner that
/// meets the objective (so an open breach can recover).
fn evaluations(pipeline: &MetricPipeline, report: &RefreshReport) -> Vec<Evaluation> {
    let mut out = vec![];
    for metric in &pipeline.spec.metrics {
        let Some(objective) = &metric.objective else {
            continue;
        };
        let Some(result) = report
            .metrics
            .iter()
            .find(|m| m.name == metric.name.as_str())
        else {
            continue;
        };
        if let Some(value) = result.value {
            out.push(Evaluation::judge(&result.name, None, value, objective));
        }
        let worst = pstatus::worst_partners(objective, &result.partners);
        for partner in &result.partners {
            let judged = Evaluation::judge(
                &result.name,
                Some(partner.partner.as_str()),
                partner.value,
                objective,
            );
            if judged.breached && !worst.iter().any(|w| w.partner == partner.partner) {
                continue;
            }
            out.push(judged);
        }
    }
    out
}

/// Forecasts of every metric that asks for one, from its daily values.
async fn forecasts(
    tx: &tokio_postgres::Transaction<'_>,
    target: &Target,
    key: &PipelineKey,
    pipeline: &MetricPipeline,
    report: &RefreshReport,
) -> Result<BTreeMap<String, MetricForecast>, Error> {
    let mut out = BTreeMap::new();
    let wanted: Vec<_> = pipeline
        .spec
        .metrics
        .iter()
        .filter(|m| m.forecast.is_some() && m.objective.is_some())
        .collect();
    if wanted.is_empty() {
        return Ok(out);
    }
    let today = today_in(tx, &pipeline.spec.time_zone).await?;
    for metric in wanted {
        let (Some(spec), Some(objective)) = (&metric.forecast, &metric.objective) else {
            continue;
        };
        if !report
            .metrics
            .iter()
            .any(|m| m.name == metric.name.as_str())
        {
            continue;
        }
        let series = sql::daily_values(
            tx,
            target,
            key,
            &pipeline.spec,
            metric.name.as_str(),
            spec.history_days,
        )
        .await?;
        let outlooks: Vec<(String, forecast::Outlook)> = series
            .into_iter()
            .map(|(partner, points)| {
                let outlook = forecast::project(&points, objective, spec);
                (partner, outlook)
            })
            .collect();
        out.insert(
            metric.name.as_str().to_string(),
            pstatus::summarize_forecast(&outlooks, today),
        );
    }
    Ok(out)
}

/// Today's date in the pipeline's time zone, as Postgres (which knows the
/// zone database) says.
async fn today_in(tx: &tokio_postgres::Transaction<'_>, zone: &str) -> Result<Date, Error> {
    let row = tx
        .query_one(
            "SELECT to_char((now() AT TIME ZONE $1)::date, 'YYYY-MM-DD')",
            &[&zone],
        )
        .await?;
    let text: String = row.get(0);
    Ok(text.parse().unwrap_or_else(|_| {
        Timestamp::now()
            .to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
            .date()
    }))
}

/// Status, Events and Prometheus after a successful refresh.
async fn publish_refresh(
    pipeline: &MetricPipeline,
    db: &TenantDatabase,
    previous: &MetricPipelineStatus,
    done: Refreshed,
    at: Timestamp,
    took: Duration,
    ctx: &PipelineContext,
) -> Result<(), Error> {
    let generation = pipeline.metadata.generation;
    let breached_since = breached_since(previous, &done.transitions);
    let metrics = pstatus::metric_statuses(
        &pipeline.spec,
        &done.report,
        &breached_since,
        &done.forecasts,
    );
    let parts = [
        PartOutcome::ready(
            SOURCES_READY,
            format!("source tables: {}", done.source_tables.join(", ")),
        ),
        PartOutcome::ready(
            REFRESHED,
            format!(
                "{} metric(s) computed from {} changed row(s)",
                done.report.metrics.len(),
                done.report.changed_rows
            ),
        ),
    ];
    let mut conditions = rollup::roll_up(
        &previous.conditions,
        &parts,
        generation,
        "every metric is computed and current",
    );
    let objectives = pstatus::objectives_condition(&metrics, generation);
    conditions::upsert(&mut conditions, objectives);
    let status = MetricPipelineStatus {
        observed_generation: generation,
        conditions,
        last_refresh_time: Some(Time(at)),
        objectives_met: pstatus::objectives_met(&metrics, &pipeline.spec),
        metrics,
        source_tables: done.source_tables.clone(),
        result_table: Some(done.report.result_table.clone()),
        last_refresh: Some(pstatus::refresh_summary(
            &done.report,
            i64::try_from(took.as_millis()).unwrap_or(i64::MAX),
        )),
        last_handled_refresh_request: pipeline.annotations().get(REFRESH_REQUESTED).cloned(),
    };
    // Several at once: a first refresh over a bad history can open a
    // breach for every metric and each of its worst partners.
    futures::stream::iter(&done.transitions)
        .for_each_concurrent(EVENTS_AT_ONCE, |t| publish_transition(pipeline, t, ctx))
        .await;
    for repair in &done.repairs {
        publish(
            pipeline,
            ctx,
            EventType::Warning,
            "ChangeCaptureRepaired",
            "Refresh",
            repair.clone(),
        )
        .await;
    }
    if done.report.mismatched_buckets > 0 {
        publish(
            pipeline,
            ctx,
            EventType::Warning,
            "IncrementalMismatch",
            "Refresh",
            format!(
                "{} of {} sampled bucket(s) differed from a recompute from raw rows and were repaired",
                done.report.mismatched_buckets, done.report.sampled_buckets
            ),
        )
        .await;
    }
    record_metrics(pipeline, db, &status, &done.report, took, ctx);
    write_status(pipeline, previous, status, ctx).await
}

/// Since when each metric has been breached over all partners.
fn breached_since(
    previous: &MetricPipelineStatus,
    transitions: &[Transition],
) -> BTreeMap<String, Time> {
    let mut since: BTreeMap<String, Time> = previous
        .metrics
        .iter()
        .filter_map(|m| Some((m.name.as_str().to_string(), m.breached_since.clone()?)))
        .collect();
    for transition in transitions {
        match transition {
            Transition::Breached {
                metric,
                partner: None,
                since: at,
                ..
            } => {
                since.insert(metric.clone(), Time(*at));
            }
            Transition::Recovered {
                metric,
                partner: None,
                ..
            } => {
                since.remove(metric);
            }
            _ => {}
        }
    }
    since
}

async fn publish_transition(
    pipeline: &MetricPipeline,
    transition: &Transition,
    ctx: &PipelineContext,
) {
    let objective = |metric: &str| {
        pipeline
            .spec
            .metrics
            .iter()
            .find(|m| m.name.as_str() == metric)
            .and_then(|m| m.objective.clone())
    };
    let describe = |metric: &str, partner: &Option<String>, value: f64| {
        let whom = partner.as_ref().map_or_else(
            || "over all partners".to_string(),
            |p| format!("for partner {p}"),
        );
        let target = objective(metric).map_or(String::new(), |o| {
            let word = match o.comparison {
                Comparison::AtLeast => "at least",
                Comparison::AtMost => "at most",
            };
            format!(" (objective: {word} {})", o.target)
        });
        format!("{metric} is {value} {whom}{target}")
    };
    let (type_, reason, note) = match transition {
        Transition::Breached {
            metric,
            partner,
            value,
            ..
        } => (
            EventType::Warning,
            "ObjectiveBreached",
            describe(metric, partner, *value),
        ),
        Transition::Recovered {
            metric,
            partner,
            value,
            ..
        } => (
            EventType::Normal,
            "ObjectiveRecovered",
            describe(metric, partner, *value),
        ),
    };
    publish(pipeline, ctx, type_, reason, "Refresh", note).await;
}

fn record_metrics(
    pipeline: &MetricPipeline,
    db: &TenantDatabase,
    status: &MetricPipelineStatus,
    report: &RefreshReport,
    took: Duration,
    ctx: &PipelineContext,
) {
    let m = &ctx.shared.metrics.pipelines;
    let labels = PipelineLabels {
        tenant: db.tenant.clone(),
        namespace: pipeline.namespace().unwrap_or_default(),
        pipeline: pipeline.name_any(),
    };
    for metric in &status.metrics {
        let l = labels.metric(metric.name.as_str());
        match metric.value {
            Some(v) => {
                m.value.get_or_create(&l).set(v);
            }
            None => {
                m.value.remove(&l);
            }
        }
        match metric.objective_met {
            Some(met) => {
                m.objective_met.get_or_create(&l).set(i64::from(met));
            }
            None => {
                m.objective_met.remove(&l);
            }
        }
        m.partners_breaching
            .get_or_create(&l)
            .set(metric.breaches.len() as i64);
        m.partners_at_risk
            .get_or_create(&l)
            .set(metric.at_risk.len() as i64);
    }
    m.last_refresh
        .get_or_create(&labels)
        .set(Timestamp::now().as_millisecond() as f64 / 1000.0);
    m.last_refresh_duration
        .get_or_create(&labels)
        .set(took.as_secs_f64());
    let path = status
        .last_refresh
        .as_ref()
        .map_or("Full", |r| match r.path.as_str() {
            "Unchanged" => "Unchanged",
            "Incremental" => "Incremental",
            _ => "Full",
        });
    m.refresh_duration
        .get_or_create(&super::telemetry::PathLabels { path })
        .observe(took.as_secs_f64());
    if report.mismatched_buckets > 0 {
        m.mismatches
            .get_or_create(&labels)
            .inc_by(report.mismatched_buckets as u64);
    }
}

/// Records a failure in status (and an Event when it is new), then returns
/// what the controller does next: transient failures retry with backoff,
/// permanent ones wait for a change.
async fn settle(
    pipeline: &MetricPipeline,
    ctx: &PipelineContext,
    error: Error,
) -> Result<Action, Error> {
    let previous = pipeline.status.clone().unwrap_or_default();
    let generation = pipeline.metadata.generation;
    let part = match &error {
        Error::Sql(sql::SqlError::Database(_))
            if conditions::is_true(&previous.conditions, SOURCES_READY) =>
        {
            REFRESHED
        }
        Error::Sql(_) | Error::Postgres(_) | Error::NoTenant(_) | Error::TenantNotReady(_) => {
            SOURCES_READY
        }
        _ => REFRESHED,
    };
    let parts = [PartOutcome::failed(
        part,
        error.reason(),
        error.message(),
        error.is_permanent(),
    )];
    let mut conditions = rollup::roll_up(
        &previous.conditions,
        &parts,
        generation,
        "every metric is computed and current",
    );
    conditions.retain(|c| c.type_ != rollup::SUSPENDED);
    if conditions::find(&conditions, OBJECTIVES_MET).is_none() {
        conditions::upsert(
            &mut conditions,
            conditions::new(
                OBJECTIVES_MET,
                false,
                "NotComputed",
                "no refresh has succeeded yet",
                generation,
            ),
        );
    }
    let status = MetricPipelineStatus {
        observed_generation: generation,
        conditions,
        ..previous.clone()
    };
    let was = conditions::find(&previous.conditions, conditions::READY).map(|c| c.reason.clone());
    if was.as_deref() != Some(error.reason()) {
        publish(
            pipeline,
            ctx,
            EventType::Warning,
            error.reason(),
            "Reconcile",
            error.message(),
        )
        .await;
    }
    write_status(pipeline, &previous, status, ctx).await?;
    match error {
        Error::TenantNotReady(_) => Ok(Action::requeue(TENANT_WAIT)),
        e if e.is_permanent() => Ok(Action::await_change()),
        e => Err(e),
    }
}

async fn write_status(
    pipeline: &MetricPipeline,
    previous: &MetricPipelineStatus,
    status: MetricPipelineStatus,
    ctx: &PipelineContext,
) -> Result<(), Error> {
    if &status == previous {
        return Ok(());
    }
    patch_status(pipeline, &status, ctx).await
}

/// Server-side applies the status subresource with the operator's field manager.
async fn patch_status(
    pipeline: &MetricPipeline,
    status: &MetricPipelineStatus,
    ctx: &PipelineContext,
) -> Result<(), Error> {
    crate::resource_status::apply_status(&ctx.shared.client, &ctx.shared.metrics, pipeline, status)
        .await?;
    Ok(())
}

pub(super) async fn publish(
    pipeline: &MetricPipeline,
    ctx: &PipelineContext,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    crate::resource_status::publish(&ctx.shared.recorder, pipeline, type_, reason, action, note)
        .await;
}
