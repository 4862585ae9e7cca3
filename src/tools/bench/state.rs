//! Generated device state: changelog records for the restore, fan-out and memory parts, and the
//! tables that make them consistent.

use mtdgate::model::*;

pub const LOOKOUT: &str = "lookout";
pub const DEFENDER: &str = "microsoft-defender-for-endpoint";

/// splitmix64 of `x`: deterministic ids without keeping them.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A version 4 UUID derived from `seed`, canonical lower case.
pub fn uuid(seed: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let (a, b) = (mix(seed), mix(seed ^ 0x5555_5555_5555_5555));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_be_bytes());
    bytes[8..].copy_from_slice(&b.to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

pub fn tenant_name(t: usize) -> String {
    format!("tenant-{t:04}")
}

fn os(platform: Platform) -> &'static str {
    if platform == Platform::Ios {
        "17.4.1"
    } else {
        "14"
    }
}

/// Device `i` of a mixed population: `tenants` tenants, UUID device and user ids, four in five
/// enrolled (MDM, corporate), the rest MAM; every third tenant's devices also carry a Defender
/// observation. Like `examples/memory.rs`'s population, restored instead of applied.
pub fn mixed(i: usize, tenants: usize, now: i64) -> DeviceStateRecord {
    let t = i % tenants.max(1);
    let r = mix(i as u64 ^ 0xabcdef);
    let platform = if r % 2 == 0 {
        Platform::Ios
    } else {
        Platform::Android
    };
    let mdm = (r >> 8) % 5 != 0;
    let mut partners = vec![PartnerObservation {
        partner_id: LOOKOUT.into(),
        health_state: HealthState::Secured,
        observed_at: now - 1_000,
        event_fingerprint: (r >> 16) as i32,
    }];
    if t % 3 == 0 {
        partners.push(PartnerObservation {
            partner_id: DEFENDER.into(),
            health_state: HealthState::Low,
            observed_at: now - 2_000,
            event_fingerprint: (r >> 24) as i32,
        });
    }
    DeviceStateRecord {
        tenant_id: tenant_name(t),
        device_id: uuid(2 * i as u64),
        user_id: Some(uuid(2 * i as u64 + 1)),
        platform,
        management: if mdm {
            Management::Mdm
        } else {
            Management::Mam
        },
        ownership: Some(if mdm {
            Ownership::Corporate
        } else {
            Ownership::Personal
        }),
        os_version: mdm.then(|| os(platform).to_owned()),
        enrolled: mdm,
        compliance: if mdm {
            ComplianceState::Compliant
        } else {
            ComplianceState::Unknown
        },
        mam_blocked: false,
        mam_wipe_incident: false,
        output_seq: 1,
        partners,
    }
}

/// Device `i` of the fan-out tenant: enrolled, Lookout reporting SECURED, COMPLIANT under the
/// tables of [`fanout_tables`].
pub fn fanout(i: usize, tenant: &str, now: i64) -> DeviceStateRecord {
    let platform = if i % 2 == 0 {
        Platform::Ios
    } else {
        Platform::Android
    };
    DeviceStateRecord {
        tenant_id: tenant.to_owned(),
        device_id: uuid(7 * i as u64 + 3),
        user_id: Some(uuid(7 * i as u64 + 4)),
        platform,
        management: Management::Mdm,
        ownership: Some(Ownership::Corporate),
        os_version: Some(os(platform).to_owned()),
        enrolled: true,
        compliance: ComplianceState::Compliant,
        mam_blocked: false,
        mam_wipe_incident: false,
        output_seq: 1,
        partners: vec![PartnerObservation {
            partner_id: LOOKOUT.into(),
            health_state: HealthState::Secured,
            observed_at: now - 1_000,
            event_fingerprint: mix(i as u64) as i32,
        }],
    }
}

/// The fan-out tenant's tables: Lookout for iOS and Android compliance, MEDIUM compliance
/// policies, one heartbeat at `now`.
pub fn fanout_tables(
    tenant: &str,
    now: i64,
) -> (ConnectorConfig, Vec<ThreatPolicy>, ConnectorHeartbeat) {
    let mut c = ConnectorConfig::new(tenant, LOOKOUT, now - 60_000);
    c.provisioned = true;
    c.setup_complete = true;
    c.android_enabled = true;
    c.ios_enabled = true;
    let policies = [Platform::Ios, Platform::Android]
        .into_iter()
        .map(|platform| ThreatPolicy {
            tenant_id: tenant.to_owned(),
            policy_id: format!("compliance-{}", platform.as_str().to_ascii_lowercase()),
            kind: PolicyKind::Compliance,
            platform,
            max_level: PolicyLevel::Medium,
            action: None,
            partner_priority: None,
            updated_at: now - 60_000,
        })
        .collect();
    let hb = ConnectorHeartbeat {
        tenant_id: tenant.to_owned(),
        partner_id: LOOKOUT.into(),
        sent_at: now,
        error_code: None,
        min_os_versions: None,
    };
    (c, policies, hb)
}

/// The latency tenant's tables: Lookout for iOS app protection and a BLOCK policy over LOW,
/// so every HIGH <-> SECURED flip of a MAM device publishes one action.
pub fn latency_tables(
    tenant: &str,
    now: i64,
) -> (ConnectorConfig, ThreatPolicy, ConnectorHeartbeat) {
    let mut c = ConnectorConfig::new(tenant, LOOKOUT, now - 60_000);
    c.provisioned = true;
    c.setup_complete = true;
    c.ios_mam_enabled = true;
    let p = ThreatPolicy {
        tenant_id: tenant.to_owned(),
        policy_id: "block".into(),
        kind: PolicyKind::AppProtection,
        platform: Platform::Ios,
        max_level: PolicyLevel::Low,
        action: Some(PolicyAction::Block),
        partner_priority: None,
        updated_at: now - 60_000,
    };
    let hb = ConnectorHeartbeat {
        tenant_id: tenant.to_owned(),
        partner_id: LOOKOUT.into(),
        sent_at: now,
        error_code: None,
        min_os_versions: None,
    };
    (c, p, hb)
}
