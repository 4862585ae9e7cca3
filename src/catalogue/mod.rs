//! The partner catalogue: which MTD partners exist, which platforms each covers and in which
//! clouds each is offered. Shipped as data (`partners.toml`) and validated on load.

use serde::Deserialize;
use thiserror::Error;

use crate::model::Platform;

/// Index of a partner in the catalogue; stable for the life of the process.
pub type PartnerIdx = u8;

/// The catalogue shipped with the binary.
pub const BUILTIN: &str = include_str!("partners.toml");

/// A set of platforms as a bit mask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlatformSet(u8);

impl PlatformSet {
    pub fn contains(self, p: Platform) -> bool {
        self.0 & (1 << p.code()) != 0
    }
    pub fn insert(&mut self, p: Platform) {
        self.0 |= 1 << p.code();
    }
    pub fn iter(self) -> impl Iterator<Item = Platform> {
        Platform::ALL
            .iter()
            .copied()
            .filter(move |&p| self.contains(p))
    }
}

/// One partner of the catalogue.
#[derive(Debug, Clone)]
pub struct Partner {
    pub id: String,
    pub name: String,
    pub platforms: PlatformSet,
    pub clouds: Vec<String>,
    /// The partner the rules call "Defender" (exempt from the multi-vendor missing-data rule,
    /// first under `DEFENDER_FIRST`).
    pub defender: bool,
    /// Whether the partner's data may be used for device compliance (false: app protection only).
    pub compliance: bool,
    /// Platforms on which the partner supports app protection (contract 1.1 MAM column).
    pub mam_platforms: PlatformSet,
}

/// The validated catalogue, for one deployment cloud.
#[derive(Debug, Clone)]
pub struct Catalogue {
    partners: Vec<Partner>,
    /// Looked up for every input: hashbrown's default hasher (foldhash), not SipHash.
    by_id: hashbrown::HashMap<String, PartnerIdx>,
    cloud: String,
    clouds: Vec<String>,
}

/// Why a catalogue file was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CatalogueError {
    #[error("partner catalogue is not valid TOML: {0}")]
    Syntax(String),
    #[error("partner catalogue: partner #{index}: {problem}")]
    Partner { index: usize, problem: String },
    #[error("partner catalogue: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    clouds: Vec<String>,
    #[serde(rename = "partner")]
    partners: Vec<PartnerEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartnerEntry {
    id: String,
    name: String,
    platforms: Vec<String>,
    clouds: Vec<String>,
    #[serde(default)]
    defender: bool,
    #[serde(default = "yes")]
    compliance: bool,
    #[serde(default)]
    mam_platforms: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Catalogue {
    /// The built-in catalogue for `cloud`.
    pub fn builtin(cloud: &str) -> Result<Self, CatalogueError> {
        Self::parse(BUILTIN, cloud)
    }

    /// Parses and validates a catalogue file for the deployment cloud `cloud`.
    pub fn parse(text: &str, cloud: &str) -> Result<Self, CatalogueError> {
        let file: File = toml::from_str(text).map_err(|e| CatalogueError::Syntax(e.to_string()))?;
        if !file.clouds.iter().any(|c| c == cloud) {
            return Err(CatalogueError::Invalid(format!(
                "cloud {cloud:?} is not one of {:?}",
                file.clouds
            )));
        }
        if file.partners.len() > PartnerIdx::MAX as usize {
            return Err(CatalogueError::Invalid(format!(
                "{} partners; at most {} are supported",
                file.partners.len(),
                PartnerIdx::MAX
            )));
        }
        let mut partners = Vec::with_capacity(file.partners.len());
        let mut by_id = hashbrown::HashMap::new();
        for (index, entry) in file.partners.into_iter().enumerate() {
            let bad = |problem: String| CatalogueError::Partner { index, problem };
            if entry.id.is_empty() || entry.id.contains('/') || entry.id.contains('.') {
                return Err(bad(format!(
                    "id {:?} must be non-empty without '/' or '.' (it names a topic)",
                    entry.id
                )));
            }
            let mut platforms = PlatformSet::default();
            for p in &entry.platforms {
                platforms.insert(
                    Platform::parse(p)
                        .ok_or_else(|| bad(format!("{}: unknown platform {p:?}", entry.id)))?,
                );
            }
            if platforms == PlatformSet::default() {
                return Err(bad(format!("{}: no platforms", entry.id)));
            }
            let mut mam_platforms = PlatformSet::default();
            for p in &entry.mam_platforms {
                let platform = Platform::parse(p)
                    .ok_or_else(|| bad(format!("{}: unknown MAM platform {p:?}", entry.id)))?;
                if !platforms.contains(platform) {
                    return Err(bad(format!(
                        "{}: MAM platform {p} is not one of its platforms",
                        entry.id
                    )));
                }
                mam_platforms.insert(platform);
            }
            if let Some(c) = entry.clouds.iter().find(|c| !file.clouds.contains(c)) {
                return Err(bad(format!("{}: unknown cloud {c:?}", entry.id)));
            }
            if by_id
                .insert(entry.id.clone(), partners.len() as PartnerIdx)
                .is_some()
            {
                return Err(bad(format!("duplicate partner id {:?}", entry.id)));
            }
            partners.push(Partner {
                id: entry.id,
                name: entry.name,
                platforms,
                clouds: entry.clouds,
                defender: entry.defender,
                compliance: entry.compliance,
                mam_platforms,
            });
        }
        let defenders = partners.iter().filter(|p| p.defender).count();
        if defenders > 1 {
            return Err(CatalogueError::Invalid(format!(
                "{defenders} partners marked defender; at most one may be"
            )));
        }
        Ok(Catalogue {
            partners,
            by_id,
            cloud: cloud.to_owned(),
            clouds: file.clouds,
        })
    }

    /// Looks a partner id up.
    pub fn index(&self, partner_id: &str) -> Option<PartnerIdx> {
        self.by_id.get(partner_id).copied()
    }

    /// The partner at `idx`.
    pub fn partner(&self, idx: PartnerIdx) -> &Partner {
        &self.partners[idx as usize]
    }

    /// All partners in catalogue order.
    pub fn partners(&self) -> &[Partner] {
        &self.partners
    }

    /// Whether the deployment's cloud offers the partner.
    pub fn offered(&self, idx: PartnerIdx) -> bool {
        self.partners[idx as usize].clouds.contains(&self.cloud)
    }

    /// The deployment cloud.
    pub fn cloud(&self) -> &str {
        &self.cloud
    }

    /// Every cloud the catalogue knows.
    pub fn clouds(&self) -> &[String] {
        &self.clouds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_matches_contract_table() {
        let c = Catalogue::builtin("public").unwrap();
        assert_eq!(c.partners().len(), 17);
        let mde = c.partner(c.index("microsoft-defender-for-endpoint").unwrap());
        assert!(mde.defender);
        assert_eq!(mde.platforms.iter().count(), 4);
        let wsc = c.partner(c.index("windows-security-center").unwrap());
        assert!(!wsc.compliance);
        assert!(wsc.platforms.contains(Platform::Windows));
        assert!(!wsc.platforms.contains(Platform::Android));
        for p in c
            .partners()
            .iter()
            .filter(|p| !p.defender && p.id != "windows-security-center")
        {
            assert!(p.platforms.contains(Platform::Android) && p.platforms.contains(Platform::Ios));
            assert!(!p.platforms.contains(Platform::Windows));
        }
        assert!(c.index("acme").is_none());
        // Contract 1.1, "Partner catalogue 1.1": the MAM column.
        let mam = |id: &str| c.partner(c.index(id).unwrap()).mam_platforms;
        for id in [
            "microsoft-defender-for-endpoint",
            "better-mobile",
            "check-point",
            "jamf",
            "lookout",
            "symantec",
            "trellix",
            "zimperium",
        ] {
            assert_eq!(
                mam(id).iter().collect::<Vec<_>>(),
                vec![Platform::Android, Platform::Ios],
                "{id}"
            );
        }
        assert_eq!(
            mam("windows-security-center").iter().collect::<Vec<_>>(),
            vec![Platform::Windows]
        );
        for id in [
            "blackberry",
            "crowdstrike",
            "pradeo",
            "sentinelone",
            "sophos",
            "trend-micro",
            "iverify",
            "trustd",
        ] {
            assert_eq!(mam(id).iter().count(), 0, "{id}");
        }
    }

    #[test]
    fn clouds_limit_partners() {
        let c = Catalogue::builtin("21vianet").unwrap();
        assert!(c.offered(c.index("lookout").unwrap()));
        assert!(!c.offered(c.index("pradeo").unwrap()));
        assert!(Catalogue::builtin("mars").is_err());
    }

    #[test]
    fn invalid_files_are_refused_with_reasons() {
        let dup = "clouds=[\"public\"]\n[[partner]]\nid=\"a\"\nname=\"A\"\nplatforms=[\"IOS\"]\nclouds=[\"public\"]\n[[partner]]\nid=\"a\"\nname=\"B\"\nplatforms=[\"IOS\"]\nclouds=[\"public\"]\n";
        assert!(Catalogue::parse(dup, "public")
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
        let plat = "clouds=[\"public\"]\n[[partner]]\nid=\"a\"\nname=\"A\"\nplatforms=[\"PALM\"]\nclouds=[\"public\"]\n";
        assert!(Catalogue::parse(plat, "public")
            .unwrap_err()
            .to_string()
            .contains("PALM"));
        let slash = "clouds=[\"public\"]\n[[partner]]\nid=\"a/b\"\nname=\"A\"\nplatforms=[\"IOS\"]\nclouds=[\"public\"]\n";
        assert!(Catalogue::parse(slash, "public").is_err());
        assert!(matches!(
            Catalogue::parse("x=", "public"),
            Err(CatalogueError::Syntax(_))
        ));
    }
}
