//! Enum symbols of the wire contract. Serde names are the Avro symbols, so JSON and Avro agree.

use serde::{Deserialize, Serialize};

/// Declares each enum with its symbols once: the serde names, `as_str`/`parse` and the codes.
macro_rules! symbols {
    ($($(#[$meta:meta])* $name:ident { $($variant:ident = $sym:literal),+ $(,)? })+) => {$(
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[repr(u8)]
        pub enum $name {
            $(#[serde(rename = $sym)] $variant),+
        }

        impl $name {
            /// Every symbol, in schema order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The contract symbol.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $sym),+ }
            }

            /// Parses a contract symbol (exact, case-sensitive).
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($sym => Some($name::$variant),)+ _ => None }
            }

            /// Compact code for state records (`ALL` index).
            pub fn code(self) -> u8 { self as u8 }

            /// Inverse of [`Self::code`].
            pub fn from_code(code: u8) -> Option<Self> { Self::ALL.get(code as usize).copied() }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
    )+};
}

symbols! {
    /// Device platform.
    Platform { Android = "ANDROID", Ios = "IOS", Windows = "WINDOWS", Macos = "MACOS" }
    /// `MDM` = enrolled (compliance policies), `MAM` = unenrolled (app protection policies).
    Management { Mdm = "MDM", Mam = "MAM" }
    /// Device ownership.
    Ownership { Corporate = "CORPORATE", Personal = "PERSONAL", Unknown = "UNKNOWN" }
    /// Health state reported by a partner (Graph `partnerReportedThreatState`).
    HealthState {
        Unknown = "UNKNOWN",
        Activated = "ACTIVATED",
        Deactivated = "DEACTIVATED",
        Secured = "SECURED",
        Low = "LOW",
        Medium = "MEDIUM",
        High = "HIGH",
        Unresponsive = "UNRESPONSIVE",
        Compromised = "COMPROMISED",
        Misconfigured = "MISCONFIGURED",
    }
    /// Severity of one threat inside a report (informational; the verdict uses `health_state`).
    ThreatSeverity { Low = "LOW", Medium = "MEDIUM", High = "HIGH", Critical = "CRITICAL" }
    /// Usable threat level, ordered `SECURED < LOW < MEDIUM < HIGH < COMPROMISED`.
    ThreatLevel { Secured = "SECURED", Low = "LOW", Medium = "MEDIUM", High = "HIGH", Compromised = "COMPROMISED" }
    /// Policy kind.
    PolicyKind { Compliance = "COMPLIANCE", AppProtection = "APP_PROTECTION" }
    /// Highest allowed level of a policy; `NOT_SET` switches a compliance rule off.
    PolicyLevel { NotSet = "NOT_SET", Secured = "SECURED", Low = "LOW", Medium = "MEDIUM", High = "HIGH" }
    /// App protection action of a policy. `WARN` decodes so it can be refused with a clear reason.
    PolicyAction { Block = "BLOCK", Wipe = "WIPE", Warn = "WARN" }
    /// Which MAM partner counts when several are enabled.
    PartnerPriority { DefenderFirst = "DEFENDER_FIRST", ThirdPartyFirst = "THIRD_PARTY_FIRST" }
    /// Device compliance state.
    ComplianceState { Unknown = "UNKNOWN", Compliant = "COMPLIANT", Noncompliant = "NONCOMPLIANT", NotEvaluated = "NOT_EVALUATED", InGracePeriod = "IN_GRACE_PERIOD" }
    /// Why a device is (or would be) noncompliant.
    ReasonCode {
        LevelExceedsPolicy = "LEVEL_EXCEEDS_POLICY",
        MissingPartnerData = "MISSING_PARTNER_DATA",
        UnsupportedOs = "UNSUPPORTED_OS",
        PartnerComplianceIgnored = "PARTNER_COMPLIANCE_IGNORED",
        ReportExpired = "REPORT_EXPIRED",
    }
    /// App protection action issued for an unenrolled device.
    AppAction { Block = "BLOCK", Unblock = "UNBLOCK", Wipe = "WIPE" }
    /// Connector status.
    ConnectorStatus {
        Unavailable = "UNAVAILABLE",
        NotSetUp = "NOT_SET_UP",
        Available = "AVAILABLE",
        Enabled = "ENABLED",
        Unresponsive = "UNRESPONSIVE",
        Error = "ERROR",
    }
    /// Why an input was not applied.
    RejectReason {
        Undecodable = "UNDECODABLE",
        InvalidField = "INVALID_FIELD",
        UnknownSchema = "UNKNOWN_SCHEMA",
        Stale = "STALE",
        Duplicate = "DUPLICATE",
        ConnectorUnavailable = "CONNECTOR_UNAVAILABLE",
        ConnectorNotSetUp = "CONNECTOR_NOT_SET_UP",
        UnsupportedPlatform = "UNSUPPORTED_PLATFORM",
        UnknownPartner = "UNKNOWN_PARTNER",
        TenantMismatch = "TENANT_MISMATCH",
        PolicyRefused = "POLICY_REFUSED",
        AppSyncDisabled = "APP_SYNC_DISABLED",
        Spoofed = "SPOOFED",
        ConflictingConnector = "CONFLICTING_CONNECTOR",
        NotEnrolled = "NOT_ENROLLED",
    }
    /// Tenant setting `no_policy_state`: the state of an enrolled device no COMPLIANCE policy
    /// applies to (Intune's "mark devices with no compliance policy assigned as").
    NoPolicyState { NotEvaluated = "NOT_EVALUATED", Compliant = "COMPLIANT", Noncompliant = "NONCOMPLIANT" }
}

impl HealthState {
    /// The usable level this state carries, or `None` for the "no usable data" states.
    pub fn level(self) -> Option<ThreatLevel> {
        match self {
            HealthState::Secured => Some(ThreatLevel::Secured),
            HealthState::Low => Some(ThreatLevel::Low),
            HealthState::Medium => Some(ThreatLevel::Medium),
            HealthState::High => Some(ThreatLevel::High),
            HealthState::Compromised => Some(ThreatLevel::Compromised),
            _ => None,
        }
    }
}

impl PolicyLevel {
    /// The highest level allowed, or `None` when the rule is off.
    pub fn allowed(self) -> Option<ThreatLevel> {
        match self {
            PolicyLevel::NotSet => None,
            PolicyLevel::Secured => Some(ThreatLevel::Secured),
            PolicyLevel::Low => Some(ThreatLevel::Low),
            PolicyLevel::Medium => Some(ThreatLevel::Medium),
            PolicyLevel::High => Some(ThreatLevel::High),
        }
    }
}

impl NoPolicyState {
    /// The compliance state this setting gives a device no policy applies to.
    pub fn state(self) -> ComplianceState {
        match self {
            NoPolicyState::NotEvaluated => ComplianceState::NotEvaluated,
            NoPolicyState::Compliant => ComplianceState::Compliant,
            NoPolicyState::Noncompliant => ComplianceState::Noncompliant,
        }
    }
}

// The `symbols!` macro derives the enum, so `#[derive(Default)]` cannot mark the variant.
#[allow(clippy::derivable_impls)]
impl Default for NoPolicyState {
    fn default() -> Self {
        NoPolicyState::NotEvaluated
    }
}

impl ThreatSeverity {
    /// Rank for "worst first": `CRITICAL` highest.
    pub fn rank(self) -> u8 {
        self as u8
    }
}
