//! Builders and a small harness around the pure engine, shared by the engine tests.

use mtdgate::engine::{Body, Engine, Output, Rejection};
use mtdgate::model::*;

use super::world;
pub use super::world::{app_policy, compliance_policy, enabled, DAY, LOOKOUT, MDE, T0, ZIMPERIUM};

pub struct Harness {
    pub engine: Engine,
    pub now: i64,
    seq: u64,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Self {
        Harness {
            engine: world::engine(),
            now: T0,
            seq: 0,
        }
    }

    pub fn apply(&mut self, key: &str, body: Body) -> Vec<Output> {
        self.apply_at(0, key, body)
    }

    pub fn apply_at(&mut self, partition: i32, key: &str, body: Body) -> Vec<Output> {
        let mut out = Vec::new();
        world::apply(&mut self.engine, partition, key, body, self.now, &mut out);
        out
    }

    /// Moves the wall clock and fires due timers.
    pub fn advance_to(&mut self, now: i64) -> Vec<Output> {
        self.now = now;
        let mut out = Vec::new();
        self.engine.advance(now, &mut out);
        out
    }

    pub fn connector(&mut self, cfg: ConnectorConfig) -> Vec<Output> {
        let key = format!("{}/{}", cfg.tenant_id, cfg.partner_id);
        self.apply(&key, Body::Connector(Some(cfg)))
    }

    pub fn policy(&mut self, p: ThreatPolicy) -> Vec<Output> {
        let key = format!("{}/{}", p.tenant_id, p.policy_id);
        self.apply(&key, Body::Policy(Some(p)))
    }

    pub fn heartbeat(&mut self, tenant: &str, partner: &str) -> Vec<Output> {
        let hb = world::heartbeat(tenant, partner, self.now);
        self.apply(&format!("{tenant}/{partner}"), Body::Heartbeat(hb))
    }

    pub fn enroll(
        &mut self,
        tenant: &str,
        device: &str,
        platform: Platform,
        m: Management,
    ) -> Vec<Output> {
        self.enroll_as(tenant, device, platform, m, Ownership::Corporate)
    }

    /// Enrolls an MDM device with `ownership`.
    pub fn enroll_owned(
        &mut self,
        tenant: &str,
        device: &str,
        platform: Platform,
        ownership: Ownership,
    ) -> Vec<Output> {
        self.enroll_as(tenant, device, platform, Management::Mdm, ownership)
    }

    fn enroll_as(
        &mut self,
        tenant: &str,
        device: &str,
        platform: Platform,
        m: Management,
        ownership: Ownership,
    ) -> Vec<Output> {
        let e = DeviceEnrollment {
            tenant_id: tenant.into(),
            device_id: device.into(),
            user_id: format!("user-of-{device}"),
            platform,
            management: m,
            ownership,
            os_version: Some("17.4".into()),
            enrolled_at: self.now,
        };
        self.apply(&format!("{tenant}/{device}"), Body::Enrollment(Some(e)))
    }

    pub fn report(&mut self, r: DeviceThreatReport) -> Vec<Output> {
        let key = format!("{}/{}", r.tenant_id, r.device_id);
        self.apply(&key, Body::Threat(r))
    }

    /// A report observed now, with a fresh event id.
    pub fn threat(
        &mut self,
        tenant: &str,
        partner: &str,
        device: &str,
        platform: Platform,
        m: Management,
        state: HealthState,
    ) -> DeviceThreatReport {
        self.seq += 1;
        report(
            tenant,
            partner,
            device,
            platform,
            m,
            state,
            self.now,
            &format!("evt-{}", self.seq),
        )
    }
}

#[allow(clippy::too_many_arguments)]
pub fn report(
    tenant: &str,
    partner: &str,
    device: &str,
    platform: Platform,
    management: Management,
    health_state: HealthState,
    observed_at: i64,
    event_id: &str,
) -> DeviceThreatReport {
    DeviceThreatReport {
        event_id: event_id.into(),
        tenant_id: tenant.into(),
        partner_id: partner.into(),
        device_id: device.into(),
        user_id: Some(format!("user-of-{device}")),
        platform,
        management,
        ownership: Some(Ownership::Corporate),
        os_version: Some("17.4".into()),
        health_state,
        threats: vec![],
        observed_at,
    }
}

pub fn compliance(out: &[Output]) -> Vec<&ComplianceChange> {
    out.iter()
        .filter_map(|o| match o {
            Output::Compliance(c) => Some(c),
            _ => None,
        })
        .collect()
}

pub fn actions(out: &[Output]) -> Vec<&AppProtectionAction> {
    out.iter()
        .filter_map(|o| match o {
            Output::AppAction(a) => Some(a),
            _ => None,
        })
        .collect()
}

pub fn statuses(out: &[Output]) -> Vec<&ConnectorStatusChange> {
    out.iter()
        .filter_map(|o| match o {
            Output::ConnectorStatus(s) => Some(s),
            _ => None,
        })
        .collect()
}

pub fn rejected(out: &[Output]) -> Vec<&Rejection> {
    out.iter()
        .filter_map(|o| match o {
            Output::Rejected(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// The single rejection reason in `out`, panicking with the outputs otherwise.
pub fn rejection(out: &[Output]) -> RejectReason {
    let r = rejected(out);
    assert_eq!(r.len(), 1, "expected one rejection, got {out:#?}");
    assert_eq!(
        out.len(),
        1,
        "a rejected input must publish nothing else: {out:#?}"
    );
    r[0].reason
}
