//! Leader election on a `coordination.k8s.io` Lease, with client-go's
//! semantics: a candidate takes a Lease over only after watching it go
//! unchanged for a whole lease duration on its own clock (so clock skew
//! between nodes does not matter), and a leader that has not renewed within
//! the renew deadline — shorter than the lease duration — stops leading
//! before anyone else may start. One Lease per shard, so shards never block
//! each other.
//!
//! The crates that exist either do not yet build against kube 5 or report
//! leadership from their last successful call, so a leader cut off from the
//! API server would keep writing; this module is small enough to own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// Timings, as client-go and controller-runtime default them.
#[derive(Debug, Clone)]
pub struct Timings {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The Lease of one shard: `base`, or `base-<hash of the selector>`.
pub fn lease_name(base: &str, selector: Option<&str>) -> String {
    match selector {
        None => base.to_string(),
        Some(s) => {
            let digest = Sha256::digest(s.as_bytes());
            format!("{base}-{}", hex::encode(&digest[..4]))
        }
    }
}

/// What a candidate saw of the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub holder: Option<String>,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// No Lease yet: create it holding it.
    Create,
    /// Ours: renew it.
    Renew,
    /// Free, released, or unchanged for a whole lease duration: take it.
    Acquire,
    /// Someone else holds it.
    Wait,
}

/// The decision (pure). `unchanged_for` is how long this candidate has
/// seen the Lease's current version, on its own clock.
pub fn decide(
    observed: Option<&Observed>,
    me: &str,
    unchanged_for: Duration,
    timings: &Timings,
) -> Step {
    match observed {
        None => Step::Create,
        Some(o) => match o.holder.as_deref() {
            Some(h) if h == me => Step::Renew,
            None | Some("") => Step::Acquire,
            Some(_) if unchanged_for >= timings.lease_duration => Step::Acquire,
            Some(_) => Step::Wait,
        },
    }
}

/// Whether a leader whose last renewal was `since_renewal` ago still leads.
pub fn still_leading(since_renewal: Duration, timings: &Timings) -> bool {
    since_renewal < timings.renew_deadline
}

/// A running election: `leading()` changes as leadership does.
pub struct Election {
    leading: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Election {
    /// Starts campaigning for `name` in `namespace` as `identity`.
    pub fn start(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: String,
        timings: Timings,
    ) -> Self {
        let (leading_tx, leading) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let api: Api<Lease> = Api::namespaced(client, namespace);
        let campaign = Campaign {
            api,
            name: name.to_string(),
            identity,
            timings,
            leading: leading_tx,
        };
        let task = tokio::spawn(campaign.run(stop_rx));
        Self {
            leading,
            stop,
            task,
        }
    }

    /// Leadership as it changes.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Stops campaigning and, if leading, hands the Lease over at once.
    pub async fn release(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Campaign {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: Timings,
    leading: watch::Sender<bool>,
}

impl Campaign {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut seen: Option<(String, Instant)> = None;
        // When the last successful renewal was sent. A watchdog, not this
        // loop, ends leadership at the renew deadline: a request hanging on a
        // dead connection must not keep a leader leading.
        let renewed: Arc<Mutex<Option<Instant>>> = Arc::default();
        let watchdog = tokio::spawn(watch_deadline(
            renewed.clone(),
            self.leading.clone(),
            self.timings.clone(),
        ));
        loop {
            match self.api.get_opt(&self.name).await {
                Ok(lease) => {
                    let version = lease
                        .as_ref()
                        .and_then(|l| l.metadata.resource_version.clone());
                    if seen.as_ref().map(|(v, _)| Some(v)) != Some(version.as_ref()) {
                        seen = version.map(|v| (v, Instant::now()));
                    }
                    let unchanged_for =
                        seen.as_ref().map_or(Duration::ZERO, |(_, at)| at.elapsed());
                    let observed = lease.as_ref().map(|l| Observed {
                        holder: l.spec.as_ref().and_then(|s| s.holder_identity.clone()),
                    });
                    let step = decide(
                        observed.as_ref(),
                        &self.identity,
                        unchanged_for,
                        &self.timings,
                    );
                    let sent = Instant::now();
                    match self.write(step, lease).await {
                        Ok(true) => *renewed.lock().unwrap() = Some(sent),
                        Ok(false) => {
                            if step == Step::Wait {
                                *renewed.lock().unwrap() = None;
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, lease = %self.name, "lease write failed")
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, lease = %self.name, "reading the lease failed")
                }
            }
            let leading = renewed
                .lock()
                .unwrap()
                .is_some_and(|at| still_leading(at.elapsed(), &self.timings));
            if *self.leading.borrow() != leading {
                tracing::info!(lease = %self.name, identity = %self.identity, leading, "leadership changed");
                let _ = self.leading.send(leading);
            }
            let jitter = rand::random_range(0.0..0.2);
            let pause = self.timings.retry_period.mul_f64(1.0 + jitter);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {
                    watchdog.abort();
                    if leading {
                        self.release().await;
                    }
                    let _ = self.leading.send(false);
                    return;
                }
            }
        }
    }

    /// Carries out `step`; `Ok(true)` when the Lease now names this candidate
    /// with a fresh renewal.
    async fn write(&self, step: Step, current: Option<Lease>) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let seconds = i32::try_from(self.timings.lease_duration.as_secs()).unwrap_or(15);
        match (step, current) {
            (Step::Wait, _) => Ok(false),
            (Step::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await?;
                Ok(true)
            }
            (step, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                if step == Step::Acquire {
                    spec.holder_identity = Some(self.identity.clone());
                    spec.acquire_time = Some(now.clone());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(seconds);
                spec.renew_time = Some(now);
                // The resourceVersion makes this a compare-and-swap: of two
                // candidates taking over, one gets a conflict.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await?;
                Ok(true)
            }
            (_, None) => Ok(false),
        }
    }

    /// Hands the Lease over: no holder, so a candidate takes it on its next try.
    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "lease released"),
            Err(e) => tracing::warn!(error = %e, lease = %self.name, "releasing the lease failed"),
        }
    }
}

/// Ends leadership once the last renewal is older than the renew deadline,
/// whatever the campaign loop is waiting on.
async fn watch_deadline(
    renewed: Arc<Mutex<Option<Instant>>>,
    leading: watch::Sender<bool>,
    timings: Timings,
) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let expired = renewed
            .lock()
            .unwrap()
            .is_none_or(|at| !still_leading(at.elapsed(), &timings));
        if expired && *leading.borrow() {
            tracing::warn!("the leader Lease was not renewed within the renew deadline");
            let _ = leading.send(false);
        }
    }
}

/// This process's identity: the pod's name and a random suffix, so a
/// restarted pod never mistakes its predecessor's renewals for its own.
pub fn identity() -> String {
    let base = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "partnerplane".into());
    format!("{base}_{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(h: &str) -> Observed {
        Observed {
            holder: Some(h.into()),
        }
    }

    #[test]
    fn a_candidate_takes_over_only_after_a_whole_unchanged_lease_duration() {
        let t = Timings::default();
        assert_eq!(decide(None, "me", Duration::ZERO, &t), Step::Create);
        assert_eq!(
            decide(Some(&held_by("me")), "me", Duration::ZERO, &t),
            Step::Renew
        );
        assert_eq!(
            decide(Some(&held_by("other")), "me", Duration::from_secs(14), &t),
            Step::Wait
        );
        assert_eq!(
            decide(Some(&held_by("other")), "me", Duration::from_secs(15), &t),
            Step::Acquire
        );
        assert_eq!(
            decide(Some(&Observed { holder: None }), "me", Duration::ZERO, &t),
            Step::Acquire
        );
        assert_eq!(
            decide(Some(&held_by("")), "me", Duration::ZERO, &t),
            Step::Acquire
        );
    }

    #[test]
    fn a_leader_stops_before_a_candidate_may_start() {
        let t = Timings::default();
        assert!(still_leading(Duration::from_secs(9), &t));
        assert!(!still_leading(Duration::from_secs(10), &t));
        // A candidate needs the lease duration; the leader gives up at the
        // renew deadline, earlier by a margin of several retry periods.
        assert!(t.renew_deadline + 2 * t.retry_period < t.lease_duration);
    }

    #[test]
    fn each_shard_has_its_own_lease() {
        assert_eq!(
            lease_name("partnerplane-operator", None),
            "partnerplane-operator"
        );
        let a = lease_name("partnerplane-operator", Some("shard=a"));
        let b = lease_name("partnerplane-operator", Some("shard=b"));
        assert_ne!(a, b);
        assert!(a.starts_with("partnerplane-operator-") && a.len() <= 63);
    }
}
