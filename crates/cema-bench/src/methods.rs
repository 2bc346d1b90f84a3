//! What is compared, and with which hyperparameters.

use std::str::FromStr;

use cema_adapt::{
    BnAdapt, Cema, CloudConfig, Eata, EdgeConfig, Foundation, GradConfig, Method, Pick,
    RandomUpload, Source, Tent,
};
use cema_model::Model;
use serde_json::{json, Map, Value};

/// A method of SPEC §3, by its `--methods` key (and issue #25's selection rule). The declaration
/// order is the execution and report order (CEMA runs before the methods that upload at its
/// measured rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MethodKey {
    Source,
    BnAdapt,
    Tent,
    Eata,
    Cema,
    Foundation,
    RandomUpload,
    UncertainUpload,
}

impl MethodKey {
    pub const ALL: [MethodKey; 8] = [
        MethodKey::Source,
        MethodKey::BnAdapt,
        MethodKey::Tent,
        MethodKey::Eata,
        MethodKey::Cema,
        MethodKey::Foundation,
        MethodKey::RandomUpload,
        MethodKey::UncertainUpload,
    ];

    pub fn key(self) -> &'static str {
        match self {
            MethodKey::Source => "source",
            MethodKey::BnAdapt => "bn_adapt",
            MethodKey::Tent => "tent",
            MethodKey::Eata => "eata",
            MethodKey::Cema => "cema",
            MethodKey::Foundation => "foundation",
            MethodKey::RandomUpload => "random_upload",
            MethodKey::UncertainUpload => "uncertain_upload",
        }
    }

    /// Uploads a given share of each stream (`--random-rate`, or CEMA's measured rate).
    pub fn uploads_at_a_rate(self) -> bool {
        matches!(self, MethodKey::RandomUpload | MethodKey::UncertainUpload)
    }

    pub fn needs_edge(self) -> bool {
        self != MethodKey::Foundation
    }

    pub fn needs_foundation(self) -> bool {
        matches!(self, MethodKey::Cema | MethodKey::Foundation) || self.uploads_at_a_rate()
    }
}

impl FromStr for MethodKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        MethodKey::ALL
            .into_iter()
            .find(|m| m.key() == s)
            .ok_or_else(|| {
                format!(
                    "unknown method {s:?}; valid methods: {}",
                    MethodKey::ALL.map(MethodKey::key).join(", ")
                )
            })
    }
}

/// Whether methods restart from the source model for every stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Each corruption × severity is its own stream; every method starts from the source model.
    Episodic,
    /// All streams back to back (corruption-major, in the given order), no reset.
    Continual,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Episodic => "episodic",
            Protocol::Continual => "continual",
        }
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "episodic" => Ok(Protocol::Episodic),
            "continual" => Ok(Protocol::Continual),
            _ => Err(format!("'{s}': expected episodic or continual")),
        }
    }
}

/// CEMA's edge selection switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// The paper's method (cema's default): dynamic E_max, E_min on, redundancy filter.
    Paper,
    /// The released code's switches: E_max fixed at E0, no E_min, redundancy filter.
    Released,
}

impl Preset {
    pub fn edge_config(self) -> EdgeConfig {
        match self {
            Preset::Paper => EdgeConfig::default(),
            Preset::Released => EdgeConfig::released(),
        }
    }
}

impl FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "paper" => Ok(Preset::Paper),
            "released" => Ok(Preset::Released),
            _ => Err(format!("'{s}': expected paper or released")),
        }
    }
}

/// Resolved hyperparameters of every method.
#[derive(Debug, Clone)]
pub struct Settings {
    pub tent: GradConfig,
    pub eata: GradConfig,
    pub edge: EdgeConfig,
    pub cloud: CloudConfig,
    pub random_seed: u64,
    pub random_pick: Pick,
    /// For cema and random upload, also run the teacher on every sample (a diagnostic).
    pub diagnose_teacher: bool,
}

impl Settings {
    /// The random-upload selection seed derived from the run's seed.
    pub fn random_seed_for(seed: u64) -> u64 {
        cema_adapt::UploadRule::seed_for(seed)
    }

    /// Each method's hyperparameters, keyed by method (the manifest's and the records').
    pub fn to_json(&self, methods: &[MethodKey]) -> Value {
        let mut m = Map::new();
        for key in methods {
            let v = match key {
                MethodKey::Source | MethodKey::BnAdapt | MethodKey::Foundation => json!({}),
                MethodKey::Tent => json!(self.tent),
                MethodKey::Eata => {
                    json!({ "grad": self.eata, "epsilon": "default_epsilon(classes)", "fisher": false })
                }
                MethodKey::Cema => json!({ "edge": self.edge, "cloud": self.cloud }),
                MethodKey::RandomUpload => json!({
                    "edge": self.edge,
                    "cloud": self.cloud,
                    "selection_seed": self.random_seed,
                    "pick": self.random_pick,
                }),
                MethodKey::UncertainUpload => json!({
                    "edge": RandomUpload::uncertain_edge(self.edge),
                    "cloud": self.cloud,
                    "selection_seed": self.random_seed,
                    "pick": Pick::HighestEntropy,
                }),
            };
            m.insert(key.key().to_string(), v);
        }
        Value::Object(m)
    }
}

/// A live method; random upload is kept concrete so its rate can be set per stream.
pub(crate) enum Runner {
    Plain(Box<dyn Method>),
    Random(Box<RandomUpload>),
}

impl Runner {
    pub(crate) fn method(&mut self) -> &mut dyn Method {
        match self {
            Runner::Plain(m) => m.as_mut(),
            Runner::Random(r) => r.as_mut(),
        }
    }
}

pub(crate) fn make(
    key: MethodKey,
    edge: Option<&Model>,
    foundation: Option<&Model>,
    s: &Settings,
    rate: f64,
) -> anyhow::Result<Runner> {
    let edge = || edge.cloned().expect("edge loaded for this method");
    let foundation = || {
        foundation
            .cloned()
            .expect("foundation loaded for this method")
    };
    Ok(match key {
        MethodKey::Source => Runner::Plain(Box::new(Source { model: edge() })),
        MethodKey::BnAdapt => Runner::Plain(Box::new(BnAdapt { model: edge() })),
        MethodKey::Tent => Runner::Plain(Box::new(Tent::new(edge(), s.tent))),
        MethodKey::Eata => Runner::Plain(Box::new(Eata::new(edge(), s.eata, None))),
        MethodKey::Cema => {
            let mut m = Cema::new(edge(), foundation(), s.edge, s.cloud)?;
            m.set_diagnose_teacher(s.diagnose_teacher);
            Runner::Plain(Box::new(m))
        }
        MethodKey::Foundation => Runner::Plain(Box::new(Foundation {
            model: foundation(),
        })),
        MethodKey::RandomUpload => {
            let mut m =
                RandomUpload::new(edge(), foundation(), s.edge, s.cloud, rate, s.random_seed)?
                    .with_pick(s.random_pick);
            m.set_diagnose_teacher(s.diagnose_teacher);
            Runner::Random(Box::new(m))
        }
        MethodKey::UncertainUpload => {
            let mut m = RandomUpload::uncertain(
                edge(),
                foundation(),
                s.edge,
                s.cloud,
                rate,
                s.random_seed,
            )?;
            m.set_diagnose_teacher(s.diagnose_teacher);
            Runner::Random(Box::new(m))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_keys_parse_exactly() {
        for m in MethodKey::ALL {
            assert_eq!(m.key().parse(), Ok(m));
        }
        let e = "tentt".parse::<MethodKey>().unwrap_err();
        assert!(e.contains("random_upload") && e.contains("bn_adapt"), "{e}");
        assert_eq!("continual".parse(), Ok(Protocol::Continual));
        assert!("both".parse::<Protocol>().is_err());
    }
}
