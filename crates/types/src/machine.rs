//! Machine presets: the cpu and memory a run needs.

use serde::{Deserialize, Serialize};

/// A machine preset (`micro` … `large-2x`). The default is `small-1x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum MachinePreset {
    #[serde(rename = "micro")]
    Micro,
    #[default]
    #[serde(rename = "small-1x")]
    Small1x,
    #[serde(rename = "small-2x")]
    Small2x,
    #[serde(rename = "medium-1x")]
    Medium1x,
    #[serde(rename = "medium-2x")]
    Medium2x,
    #[serde(rename = "large-1x")]
    Large1x,
    #[serde(rename = "large-2x")]
    Large2x,
}

impl MachinePreset {
    /// All presets from smallest to largest.
    pub const ALL: [MachinePreset; 7] = [
        MachinePreset::Micro,
        MachinePreset::Small1x,
        MachinePreset::Small2x,
        MachinePreset::Medium1x,
        MachinePreset::Medium2x,
        MachinePreset::Large1x,
        MachinePreset::Large2x,
    ];

    /// The preset's name.
    pub fn name(self) -> &'static str {
        match self {
            MachinePreset::Micro => "micro",
            MachinePreset::Small1x => "small-1x",
            MachinePreset::Small2x => "small-2x",
            MachinePreset::Medium1x => "medium-1x",
            MachinePreset::Medium2x => "medium-2x",
            MachinePreset::Large1x => "large-1x",
            MachinePreset::Large2x => "large-2x",
        }
    }

    /// Parses a preset name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// vCPUs.
    pub fn cpu(self) -> f64 {
        match self {
            MachinePreset::Micro => 0.25,
            MachinePreset::Small1x => 0.5,
            MachinePreset::Small2x => 1.0,
            MachinePreset::Medium1x => 1.0,
            MachinePreset::Medium2x => 2.0,
            MachinePreset::Large1x => 4.0,
            MachinePreset::Large2x => 8.0,
        }
    }

    /// Memory in GB.
    pub fn memory(self) -> f64 {
        match self {
            MachinePreset::Micro => 0.25,
            MachinePreset::Small1x => 0.5,
            MachinePreset::Small2x => 1.0,
            MachinePreset::Medium1x => 2.0,
            MachinePreset::Medium2x => 4.0,
            MachinePreset::Large1x => 8.0,
            MachinePreset::Large2x => 16.0,
        }
    }

    /// An indicative cost per millisecond in cents, shown in `ctx.machine`; self-hosted runs
    /// are not billed, so this only lets usage be compared across presets.
    pub fn cents_per_ms(self) -> f64 {
        match self {
            MachinePreset::Micro => 0.0000075,
            MachinePreset::Small1x => 0.0000169,
            MachinePreset::Small2x => 0.0000338,
            MachinePreset::Medium1x => 0.0000475,
            MachinePreset::Medium2x => 0.0000950,
            MachinePreset::Large1x => 0.0001900,
            MachinePreset::Large2x => 0.0003800,
        }
    }

    /// The smallest preset with at least this cpu and memory.
    pub fn smallest_fitting(cpu: f64, memory: f64) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.cpu() >= cpu && p.memory() >= memory)
    }

    /// `{name, cpu, memory, centsPerMs}` as the API and `ctx.machine` carry it.
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name(),
            "cpu": self.cpu(),
            "memory": self.memory(),
            "centsPerMs": self.cents_per_ms(),
        })
    }
}

impl std::fmt::Display for MachinePreset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_reference_table() {
        assert_eq!(MachinePreset::parse("medium-1x"), Some(MachinePreset::Medium1x));
        assert_eq!(MachinePreset::Medium1x.cpu(), 1.0);
        assert_eq!(MachinePreset::Medium1x.memory(), 2.0);
        assert_eq!(MachinePreset::default(), MachinePreset::Small1x);
        assert_eq!(MachinePreset::smallest_fitting(1.0, 1.5), Some(MachinePreset::Medium1x));
        assert_eq!(MachinePreset::smallest_fitting(9.0, 1.0), None);
        assert_eq!(serde_json::to_string(&MachinePreset::Large2x).unwrap(), "\"large-2x\"");
    }
}
