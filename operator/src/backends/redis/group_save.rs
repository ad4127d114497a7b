//! Group commit for `ACL SAVE`. Saving rewrites the whole ACL file, so one
//! save per user change costs more the more tenants there are. Callers that
//! changed a user ask for a save and wait for it; every request that arrives
//! while a save runs is answered by the next one, which starts after their
//! changes — so no caller returns before its change is on disk, and a burst
//! of N changes costs about two saves, not N.
//!
//! A change whose save failed stays unsaved until a later save succeeds:
//! callers that find nothing to change ask [`GroupSave::save_pending`] so
//! that such a change is not reported as done while only the server's
//! memory holds it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

type Reply<E> = oneshot::Sender<Result<(), E>>;

/// Changes made, and how many of them a successful save is known to cover.
#[derive(Debug)]
struct Progress {
    changed: AtomicU64,
    saved: AtomicU64,
}

impl Progress {
    fn pending(&self) -> bool {
        self.saved.load(Ordering::SeqCst) < self.changed.load(Ordering::SeqCst)
    }
}

/// A handle to the task that runs saves; cheap to clone.
#[derive(Clone)]
pub struct GroupSave<E> {
    requests: mpsc::UnboundedSender<Reply<E>>,
    progress: Arc<Progress>,
}

impl<E: Clone + Send + 'static> GroupSave<E> {
    /// Spawns the saving task around `save`. It ends when every handle is
    /// dropped. A save is pending from the start: an earlier process may have
    /// stopped between a change and its save.
    pub fn spawn<F, Fut>(save: F) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send,
    {
        let progress = Arc::new(Progress {
            changed: AtomicU64::new(1),
            saved: AtomicU64::new(0),
        });
        let (requests, mut queue) = mpsc::unbounded_channel::<Reply<E>>();
        let task_progress = progress.clone();
        tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                let mut waiting = vec![first];
                while let Ok(more) = queue.try_recv() {
                    waiting.push(more);
                }
                // Every change counted by now was made before the save starts.
                let covered = task_progress.changed.load(Ordering::SeqCst);
                let outcome = save().await;
                if outcome.is_ok() {
                    task_progress.saved.fetch_max(covered, Ordering::SeqCst);
                }
                for reply in waiting {
                    let _ = reply.send(outcome.clone());
                }
            }
        });
        Self { requests, progress }
    }

    /// Records a change made (or possibly made: a write whose answer was
    /// lost) to what is saved; it stays pending until a save covers it.
    pub fn changed(&self) {
        self.progress.changed.fetch_add(1, Ordering::SeqCst);
    }

    /// Records a change, then returns once a save that started after it has
    /// finished.
    pub async fn save_change(&self) -> Result<(), E>
    where
        E: From<Stopped>,
    {
        self.changed();
        self.save().await
    }

    /// Returns at once when every recorded change is saved; otherwise once
    /// a save that started after this call has finished.
    pub async fn save_pending(&self) -> Result<(), E>
    where
        E: From<Stopped>,
    {
        if self.progress.pending() {
            self.save().await
        } else {
            Ok(())
        }
    }

    /// Returns once a save that started after this call has finished.
    pub async fn save(&self) -> Result<(), E>
    where
        E: From<Stopped>,
    {
        let (reply, answer) = oneshot::channel();
        self.requests.send(reply).map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)?
    }
}

/// The saving task is gone (the runtime is shutting down).
#[derive(Debug, Clone, Copy)]
pub struct Stopped;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::time::Duration;

    #[derive(Debug, Clone, PartialEq)]
    struct Failed(&'static str);

    impl From<Stopped> for Failed {
        fn from(_: Stopped) -> Self {
            Failed("stopped")
        }
    }

    /// A save that counts itself and fails while `failing` is set.
    fn counted(saves: Arc<AtomicUsize>, failing: Arc<AtomicBool>) -> GroupSave<Failed> {
        GroupSave::spawn(move || {
            let saves = saves.clone();
            let failing = failing.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                saves.fetch_add(1, Ordering::SeqCst);
                if failing.load(Ordering::SeqCst) {
                    Err(Failed("disk full"))
                } else {
                    Ok(())
                }
            }
        })
    }

    #[tokio::test]
    async fn a_burst_of_requests_shares_few_saves_and_each_waits_for_one() {
        let saves = Arc::new(AtomicUsize::new(0));
        let counter = saves.clone();
        let group = GroupSave::spawn(move || {
            let counter = counter.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<(), Failed>(())
            }
        });
        let callers: Vec<_> = (0..50)
            .map(|_| {
                let group = group.clone();
                let saves = saves.clone();
                tokio::spawn(async move {
                    let before = saves.load(Ordering::SeqCst);
                    group.save_change().await.unwrap();
                    // A save finished after the request was made.
                    assert!(saves.load(Ordering::SeqCst) > before);
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
        let total = saves.load(Ordering::SeqCst);
        assert!((1..=3).contains(&total), "50 requests took {total} saves");
    }

    #[tokio::test]
    async fn a_failed_save_is_reported_to_everyone_waiting_for_it() {
        let group = GroupSave::spawn(|| async { Err::<(), _>(Failed("disk full")) });
        let (a, b) = tokio::join!(group.save_change(), group.save_change());
        assert_eq!(a, Err(Failed("disk full")));
        assert_eq!(b, Err(Failed("disk full")));
    }

    #[tokio::test]
    async fn a_new_handle_saves_once_before_reporting_nothing_pending() {
        let saves = Arc::new(AtomicUsize::new(0));
        let group = counted(saves.clone(), Arc::default());
        group.save_pending().await.unwrap();
        assert_eq!(
            saves.load(Ordering::SeqCst),
            1,
            "an earlier run's change may be unsaved"
        );
        group.save_pending().await.unwrap();
        assert_eq!(saves.load(Ordering::SeqCst), 1, "nothing left to save");
    }

    #[tokio::test]
    async fn a_change_whose_save_failed_is_saved_by_the_next_caller_that_changes_nothing() {
        let saves = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let group = counted(saves.clone(), failing.clone());
        group.save_pending().await.unwrap();
        failing.store(true, Ordering::SeqCst);
        assert_eq!(group.save_change().await, Err(Failed("disk full")));
        // A retry finds the change already in memory: it must still be saved.
        failing.store(false, Ordering::SeqCst);
        let before = saves.load(Ordering::SeqCst);
        group.save_pending().await.unwrap();
        assert_eq!(saves.load(Ordering::SeqCst), before + 1);
        group.save_pending().await.unwrap();
        assert_eq!(saves.load(Ordering::SeqCst), before + 1);
    }

    #[tokio::test]
    async fn a_change_recorded_without_a_save_stays_pending() {
        let saves = Arc::new(AtomicUsize::new(0));
        let group = counted(saves.clone(), Arc::default());
        group.save_pending().await.unwrap();
        group.changed();
        group.save_pending().await.unwrap();
        assert_eq!(saves.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_change_made_while_a_save_runs_is_not_counted_as_saved_by_it() {
        let started = Arc::new(tokio::sync::Notify::new());
        let release = Arc::new(tokio::sync::Notify::new());
        let (s, r) = (started.clone(), release.clone());
        let group = GroupSave::spawn(move || {
            let (s, r) = (s.clone(), r.clone());
            async move {
                s.notify_one();
                r.notified().await;
                Ok::<(), Failed>(())
            }
        });
        let first = tokio::spawn({
            let group = group.clone();
            async move { group.save_change().await }
        });
        started.notified().await;
        // Made while the first save runs, whose outcome then must not cover it.
        group.changed();
        release.notify_one();
        first.await.unwrap().unwrap();
        assert!(group.progress.pending());
        let second = tokio::spawn({
            let group = group.clone();
            async move { group.save_pending().await }
        });
        started.notified().await;
        release.notify_one();
        second.await.unwrap().unwrap();
        assert!(!group.progress.pending());
    }
}
