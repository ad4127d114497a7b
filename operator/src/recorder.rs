//! Kubernetes Events, published through kube's recorder with its memory
//! bounded. kube's recorder keeps every event it published in the last six
//! minutes, whole, to count repeats into a series; 10,000 tenants becoming
//! Ready together would hold tens of megabytes of events that never repeat.
//! A fresh recorder after every [`ROTATE`] events bounds that cache; a
//! repeat across a rotation starts a new series, as after a restart.

use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{self, Event, Reporter};

/// Events published through one recorder before a fresh one replaces it.
const ROTATE: usize = 500;

pub struct Recorder {
    client: kube::Client,
    reporter: Reporter,
    current: Mutex<(events::Recorder, usize)>,
}

impl Recorder {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        let first = events::Recorder::new(client.clone(), reporter.clone());
        Self {
            client,
            reporter,
            current: Mutex::new((first, 0)),
        }
    }

    /// Publishes `event` about the object `reference` names.
    pub async fn publish(
        &self,
        event: &Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let recorder = {
            let mut current = self.current.lock().expect("recorder lock");
            if current.1 >= ROTATE {
                *current = (
                    events::Recorder::new(self.client.clone(), self.reporter.clone()),
                    0,
                );
            }
            current.1 += 1;
            current.0.clone()
        };
        recorder.publish(event, reference).await
    }
}
