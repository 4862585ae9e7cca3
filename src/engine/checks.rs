//! Input checks shared by every input: keys, tenant and id agreement between key and payload,
//! known partners and the platforms they cover, clock skew, staleness, partner-bound topics and
//! connectors that refuse traffic. Each returns the rejection the contract names.

use crate::catalogue::PartnerIdx;
use crate::model::{ConnectorStatus, Platform, RejectReason};

use super::connector::traffic_refusal;
use super::{key, Applied, Body, Engine, Rejection};

/// Splits a `tenant/id` record key; anything else is `INVALID_FIELD`.
pub(super) fn split(key: Option<&[u8]>) -> Result<(&str, &str), Rejection> {
    key::split_key(key).map_err(|d| Rejection::new(RejectReason::InvalidField, format!("key: {d}")))
}

/// A one-part `tenant` key, or `INVALID_FIELD`.
pub(super) fn single(key: Option<&[u8]>) -> Result<&str, Rejection> {
    key::single_key(key)
        .map_err(|d| Rejection::new(RejectReason::InvalidField, format!("key: {d}")))
}

/// A payload tenant that differs from the key's is `TENANT_MISMATCH`.
pub(super) fn check_tenant(key_tenant: &str, payload_tenant: &str) -> Applied {
    if key_tenant != payload_tenant {
        return Err(Rejection::new(
            RejectReason::TenantMismatch,
            format!("key names tenant {key_tenant:?} but the payload names {payload_tenant:?}"),
        ));
    }
    Ok(())
}

/// A payload device, partner or policy id that differs from the key's is `INVALID_FIELD`.
pub(super) fn check_field(field: &str, from_key: &str, payload: &str) -> Applied {
    if from_key != payload {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            format!("{field} {payload:?} differs from the key's {from_key:?}"),
        ));
    }
    Ok(())
}

/// Refuses an input older than the one already held (`STALE`).
pub(super) fn not_older(field: &str, at: i64, held: i64, what: &str) -> Applied {
    if at < held {
        return Err(Rejection::new(
            RejectReason::Stale,
            format!("{field} {at} is older than {what} already held ({held})"),
        ));
    }
    Ok(())
}

/// Refuses traffic for a connector that is `UNAVAILABLE` or `NOT_SET_UP`.
pub(super) fn connector_accepts(status: ConnectorStatus, tenant: &str, partner: &str) -> Applied {
    match traffic_refusal(status) {
        Some(reason) => Err(Rejection::new(
            reason,
            format!(
                "connector {tenant}/{partner} is {status} ({})",
                status_hint(status)
            ),
        )),
        None => Ok(()),
    }
}

fn status_hint(status: ConnectorStatus) -> &'static str {
    match status {
        ConnectorStatus::NotSetUp => "setup incomplete",
        _ => "not provisioned",
    }
}

/// For inputs read from a partner-bound topic: refuses a record that names another partner
/// (`SPOOFED`), so a vendor can only speak for itself.
pub fn check_partner_binding(body: &Body, bound: &str) -> Result<(), Rejection> {
    let named = match body {
        Body::Threat(r) => &r.partner_id,
        Body::Heartbeat(h) => &h.partner_id,
        _ => return Ok(()),
    };
    if named != bound {
        return Err(Rejection::new(
            RejectReason::Spoofed,
            format!("record names partner {named:?} but arrived on the topic bound to {bound:?}"),
        ));
    }
    Ok(())
}

impl Engine {
    /// The catalogue index of a partner that covers `platform`.
    pub(super) fn partner_for(
        &self,
        partner_id: &str,
        platform: Platform,
    ) -> Result<PartnerIdx, Rejection> {
        let idx = self.known_partner(partner_id)?;
        if !self.catalogue.partner(idx).platforms.contains(platform) {
            return Err(Rejection::new(
                RejectReason::UnsupportedPlatform,
                format!("partner {partner_id} does not cover {platform}"),
            ));
        }
        Ok(idx)
    }

    /// The catalogue index of a partner; `UNKNOWN_PARTNER` if the catalogue lacks it.
    pub(super) fn known_partner(&self, partner_id: &str) -> Result<PartnerIdx, Rejection> {
        self.catalogue.index(partner_id).ok_or_else(|| {
            Rejection::new(
                RejectReason::UnknownPartner,
                format!("partner {partner_id:?} is not in the catalogue"),
            )
        })
    }

    /// Refuses a timestamp further ahead of the wall clock than the allowed skew.
    pub(super) fn check_skew(&self, field: &str, at: i64, now: i64) -> Applied {
        let ahead = at.saturating_sub(now);
        if ahead > self.settings.max_clock_skew_ms {
            return Err(Rejection::new(
                RejectReason::InvalidField,
                format!(
                    "{field} {at} is {ahead} ms ahead of the clock; at most {} ms of skew is accepted",
                    self.settings.max_clock_skew_ms
                ),
            ));
        }
        Ok(())
    }
}
