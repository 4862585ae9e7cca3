//! App Sync: an iOS app inventory goes to every connector of the tenant with `ios_app_sync`
//! that is not blocked; personal devices lose their unmanaged apps unless the connector has
//! `ios_app_sync_personal_full`. Only an enrolled (MDM) iOS device's inventory is shared, with
//! the ownership of its enrollment (`UNKNOWN` treated as `PERSONAL`, the stricter choice);
//! any other is `NOT_ENROLLED` (contract 1.1), whatever ownership the inventory claims. If no
//! connector takes it, it is rejected: the blocked connector's reason when App Sync is on only
//! for blocked ones, else `APP_SYNC_DISABLED`.

use crate::model::*;

use super::checks::connector_accepts;
use super::devices::flags;
use super::{Applied, Engine, Input, Output, Rejection};

impl Engine {
    pub(super) fn apply_inventory(&mut self, input: Input<'_>, inv: &AppInventory) -> Applied {
        input.check_ids(&inv.tenant_id, "device_id", &inv.device_id)?;
        let (kt, out) = (input.tenant, input.out);
        let tenants = self.tenants.read();
        let disabled = || {
            Rejection::new(
                RejectReason::AppSyncDisabled,
                format!("tenant {kt} has no connector with App Sync for iOS devices"),
            )
        };
        let not_enrolled = |why: String| {
            Rejection::new(
                RejectReason::NotEnrolled,
                format!("App Sync shares inventories of enrolled iOS devices only; {why}"),
            )
        };
        let tenant = tenants
            .get(kt)
            .ok_or_else(|| not_enrolled(format!("device {kt}/{} is not enrolled", input.id)))?;
        let enrolled = self.shards.get(&input.partition).and_then(|shard| {
            let d = shard.get(shard.find(tenant, input.id)?);
            Some((
                d.has(flags::ENROLLED),
                d.management,
                d.platform,
                d.ownership,
            ))
        });
        let ownership = match enrolled {
            Some((true, Management::Mdm, Platform::Ios, ownership)) => {
                match ownership.unwrap_or(Ownership::Unknown) {
                    Ownership::Unknown => Ownership::Personal,
                    o => o,
                }
            }
            Some((true, Management::Mdm, p, _)) => {
                return Err(not_enrolled(format!("device is enrolled on {p}")))
            }
            Some((true, Management::Mam, _, _)) => {
                return Err(not_enrolled(
                    "device is managed by app protection only (MAM)".into(),
                ))
            }
            _ => {
                return Err(not_enrolled(format!(
                    "device {kt}/{} is not enrolled",
                    input.id
                )))
            }
        };
        let mut blocked: Option<Rejection> = None;
        let mut sent = 0;
        for (&idx, conn) in &tenants.tables(tenant).connectors {
            let partner = self.catalogue.partner(idx);
            let Some(cfg) = conn.config.as_ref() else {
                continue;
            };
            if !cfg.ios_app_sync || !partner.platforms.contains(Platform::Ios) {
                continue;
            }
            if let Err(r) = connector_accepts(conn.published.status, kt, &partner.id) {
                blocked.get_or_insert(r);
                continue;
            }
            let strip = ownership == Ownership::Personal && !cfg.ios_app_sync_personal_full;
            let apps: Vec<AppInfo> = inv
                .apps
                .iter()
                .filter(|a| !strip || a.managed)
                .cloned()
                .collect();
            out.push(Output::Inventory(PartnerAppInventory {
                tenant_id: inv.tenant_id.clone(),
                partner_id: partner.id.clone(),
                device_id: inv.device_id.clone(),
                ownership,
                collected_at: inv.collected_at,
                unmanaged_apps_removed: (inv.apps.len() - apps.len()) as i32,
                apps,
            }));
            sent += 1;
        }
        if sent == 0 {
            return Err(blocked.unwrap_or_else(disabled));
        }
        Ok(())
    }
}
