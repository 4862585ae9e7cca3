//! Which schemas the service reads and writes with: the decoder of its inputs (with the
//! schema registry when one is configured) and, for `avro-confluent` outputs, the schema id of
//! each output topic as the registry gave it under `<topic>-value` (contract 1.1, "Schema
//! registry"). Built once per service, before any pipeline, and shared by all of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tracing::{info, warn};

use crate::catalogue::Catalogue;
use crate::codec::{AvroRecord, Decoder, OutputEncoding, SchemaEntry};
use crate::config::Config;
use crate::model::{
    AppProtectionAction, ComplianceChange, ConnectorStatusChange, PartnerAppInventory,
    RejectedEvent,
};
use crate::registry::{Registry, RegistryError};
use crate::telemetry;

/// A decode that must wait for the schema registry: the record is neither applied nor
/// rejected, and is read again once the registry answers.
#[derive(Debug, thiserror::Error)]
#[error("waiting for the schema registry: {0}")]
pub struct RegistryWait(pub String);

/// The decoder and the output schema ids.
pub struct Schemas {
    pub decoder: Decoder,
    /// Output topic -> the id its records carry (`avro-confluent` with a registry only).
    output_ids: HashMap<String, u32>,
    pub registry: Option<Arc<Registry>>,
}

impl Schemas {
    /// Without a registry: the embedded schemas and `schemas/ids.toml`.
    pub fn embedded() -> Schemas {
        Schemas {
            decoder: Decoder::new(),
            output_ids: HashMap::new(),
            registry: None,
        }
    }

    /// For `cfg`: connects to the registry if one is configured and, for `avro-confluent`
    /// outputs, registers (or looks up) each output topic's schema, waiting while the
    /// registry does not answer (until `shutdown`). A refusal (an incompatible schema under
    /// the subject, bad credentials, a look-up of a schema never registered) stops the start.
    pub fn connect(
        cfg: &Config,
        catalogue: &Catalogue,
        shutdown: &AtomicBool,
    ) -> anyhow::Result<Schemas> {
        let rc = &cfg.schema_registry;
        if !rc.enabled() {
            return Ok(Schemas::embedded());
        }
        let registry = Arc::new(Registry::new(rc)?);
        telemetry::schema_registry_waiting(0);
        let decoder = Decoder::with_resolver(registry.clone(), rc.cache_capacity);
        let mut output_ids = HashMap::new();
        if cfg.processing.output_encoding == OutputEncoding::AvroConfluent {
            let started = Instant::now();
            for (topic, entry) in output_topics(cfg, catalogue) {
                let subject = format!("{topic}-value");
                let id = loop {
                    match registry.subject_id(&subject, entry.source(), rc.auto_register) {
                        Ok(id) => break id,
                        Err(RegistryError::Unreachable { .. })
                            if !shutdown.load(Ordering::SeqCst) =>
                        {
                            // Logged by the client; wait for its backoff.
                            let wait = registry
                                .retry_at()
                                .map(|t| t.saturating_duration_since(Instant::now()))
                                .unwrap_or(Duration::from_millis(250));
                            std::thread::sleep(wait.min(Duration::from_secs(1)));
                        }
                        Err(e) => bail!(
                            "{e}; outputs are avro-confluent, so each output topic's schema must \
                             be in the registry under <topic>-value"
                        ),
                    }
                };
                decoder.prime(id, entry);
                output_ids.insert(topic, id);
            }
            info!(
                registry = registry.url(),
                subjects = output_ids.len(),
                seconds = started.elapsed().as_secs_f64(),
                registered = rc.auto_register,
                "output schemas in the schema registry"
            );
        } else {
            info!(
                registry = registry.url(),
                "input schema ids resolved by the schema registry"
            );
            if cfg.processing.output_encoding == OutputEncoding::Avro {
                warn!(
                    "outputs are avro (single-object): consumers that read through the registry \
                     want processing.output_encoding = \"avro-confluent\""
                );
            }
        }
        Ok(Schemas {
            decoder,
            output_ids,
            registry: Some(registry),
        })
    }

    /// The schema id records on `topic` carry, when the registry gave one.
    pub fn output_id(&self, topic: &str) -> Option<u32> {
        self.output_ids.get(topic).copied()
    }

    /// When to try again records that waited for the registry.
    pub fn retry_at(&self) -> Instant {
        self.registry
            .as_ref()
            .and_then(|r| r.retry_at())
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(250))
    }
}

/// Every output topic with the schema of its records.
fn output_topics(cfg: &Config, catalogue: &Catalogue) -> Vec<(String, &'static SchemaEntry)> {
    let t = &cfg.topics;
    let mut v = vec![
        (
            t.compliance_changes.clone(),
            ComplianceChange::schema_entry(),
        ),
        (
            t.app_protection_actions.clone(),
            AppProtectionAction::schema_entry(),
        ),
        (
            t.connector_status.clone(),
            ConnectorStatusChange::schema_entry(),
        ),
        (t.rejected.clone(), RejectedEvent::schema_entry()),
    ];
    for p in catalogue.partners() {
        v.push((
            cfg.partner_topic(&p.id),
            PartnerAppInventory::schema_entry(),
        ));
    }
    v
}
