//! The scheduler's configuration file (`--scheduler-config`): a
//! `kubescheduler.config.k8s.io/v1` `KubeSchedulerConfiguration`, read the way
//! kube-scheduler reads it (unknown fields refused), of which rk honours the queue's
//! backoff, `percentageOfNodesToScore` (top level and per profile) and the profiles'
//! scheduler names. `minFeasibleNodesToFind` is rk's own addition: kube-scheduler
//! hard-codes it at 100.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// How the scheduler searches and retries.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// The profiles: pods whose `spec.schedulerName` names one are this scheduler's.
    pub profiles: Vec<Profile>,
    /// Fewer feasible nodes than this are never searched for (kube-scheduler: 100).
    pub min_feasible_nodes: usize,
    /// The first retry of an unschedulable pod waits this long, doubling per attempt.
    pub initial_backoff: Duration,
    /// ... up to this.
    pub max_backoff: Duration,
}

/// One scheduling profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// The name pods ask for.
    pub scheduler_name: String,
    /// Percentage of nodes to find feasible before scoring; None for the adaptive
    /// default (50 - nodes/125, at least 5).
    pub percentage_of_nodes_to_score: Option<u32>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            profiles: vec![Profile { scheduler_name: super::NAME.into(), percentage_of_nodes_to_score: None }],
            min_feasible_nodes: 100,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Why a scheduler configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading scheduler config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid configuration.
    #[error("scheduler config {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, naming the field.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    api_version: Option<String>,
    kind: Option<String>,
    percentage_of_nodes_to_score: Option<i64>,
    min_feasible_nodes_to_find: Option<i64>,
    pod_initial_backoff_seconds: Option<i64>,
    pod_max_backoff_seconds: Option<i64>,
    #[serde(default)]
    profiles: Vec<FileProfile>,
    // Fields kube-scheduler has that mean nothing in one process: accepted, ignored.
    #[serde(rename = "parallelism")]
    _parallelism: Option<serde_json::Value>,
    #[serde(rename = "leaderElection")]
    _leader_election: Option<serde_json::Value>,
    #[serde(rename = "clientConnection")]
    _client_connection: Option<serde_json::Value>,
    #[serde(rename = "enableProfiling")]
    _enable_profiling: Option<serde_json::Value>,
    #[serde(rename = "enableContentionProfiling")]
    _enable_contention_profiling: Option<serde_json::Value>,
    #[serde(rename = "delayCacheUntilActive")]
    _delay_cache_until_active: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileProfile {
    scheduler_name: Option<String>,
    percentage_of_nodes_to_score: Option<i64>,
    plugins: Option<serde_json::Value>,
    plugin_config: Option<serde_json::Value>,
}

fn percentage(v: Option<i64>, field: &str) -> Result<Option<u32>, String> {
    match v {
        None | Some(0) => Ok(None),
        Some(p @ 1..=100) => Ok(Some(p as u32)),
        Some(p) => Err(format!("{field}: Invalid value: {p}: not in valid range [0-100]")),
    }
}

fn seconds(v: Option<i64>, default: Duration, field: &str) -> Result<Duration, String> {
    match v {
        None => Ok(default),
        Some(s) if s > 0 => Ok(Duration::from_secs(s as u64)),
        Some(s) => Err(format!("{field}: Invalid value: {s}: must be greater than 0")),
    }
}

impl SchedulerConfig {
    /// Parses a configuration's text.
    pub fn parse(text: &str) -> Result<SchedulerConfig, String> {
        let f: File = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        if let Some(v) = f.api_version.as_deref().filter(|v| *v != "kubescheduler.config.k8s.io/v1") {
            return Err(format!("apiVersion {v:?} is not kubescheduler.config.k8s.io/v1"));
        }
        if let Some(k) = f.kind.as_deref().filter(|k| *k != "KubeSchedulerConfiguration") {
            return Err(format!("kind {k:?} is not KubeSchedulerConfiguration"));
        }
        let top = percentage(f.percentage_of_nodes_to_score, "percentageOfNodesToScore")?;
        let d = SchedulerConfig::default();
        let initial = seconds(f.pod_initial_backoff_seconds, d.initial_backoff, "podInitialBackoffSeconds")?;
        let max = seconds(f.pod_max_backoff_seconds, d.max_backoff, "podMaxBackoffSeconds")?;
        if max < initial {
            return Err(format!(
                "podMaxBackoffSeconds: Invalid value: {}: must be greater than or equal to PodInitialBackoffSeconds",
                max.as_secs()
            ));
        }
        let min_feasible_nodes = match f.min_feasible_nodes_to_find {
            None => d.min_feasible_nodes,
            Some(n) if n >= 1 => n as usize,
            Some(n) => return Err(format!("minFeasibleNodesToFind: Invalid value: {n}: must be at least 1")),
        };
        let mut profiles = Vec::new();
        for (i, p) in f.profiles.iter().enumerate() {
            let name = p.scheduler_name.clone().unwrap_or_else(|| super::NAME.into());
            if name.is_empty() {
                return Err(format!("profiles[{i}].schedulerName: Required value"));
            }
            if profiles.iter().any(|q: &Profile| q.scheduler_name == name) {
                return Err(format!("profiles[{i}].schedulerName: Duplicate value: {name:?}"));
            }
            if p.plugins.is_some() || p.plugin_config.is_some() {
                tracing::warn!(profile = %name, "scheduler profile plugins and pluginConfig are not configurable in rk; ignored");
            }
            let own = percentage(p.percentage_of_nodes_to_score, &format!("profiles[{i}].percentageOfNodesToScore"))?;
            profiles.push(Profile { scheduler_name: name, percentage_of_nodes_to_score: own.or(top) });
        }
        if profiles.is_empty() {
            profiles.push(Profile { scheduler_name: super::NAME.into(), percentage_of_nodes_to_score: top });
        }
        Ok(SchedulerConfig { profiles, min_feasible_nodes, initial_backoff: initial, max_backoff: max })
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<SchedulerConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        SchedulerConfig::parse(&text)
            .map_err(|message| ConfigError::Invalid { path: path.display().to_string(), message })
    }

    /// The profile of a pod's `spec.schedulerName` (empty means the default).
    pub(super) fn profile(&self, scheduler_name: Option<&str>) -> Option<&Profile> {
        let want = scheduler_name.filter(|n| !n.is_empty()).unwrap_or(super::NAME);
        self.profiles.iter().find(|p| p.scheduler_name == want)
    }

    /// kube-scheduler's `numFeasibleNodesToFind`: every node when there are fewer than
    /// the minimum or the percentage is 100; else the percentage (adaptive by default),
    /// but at least the minimum.
    pub(super) fn feasible_to_find(&self, profile: &Profile, nodes: usize) -> usize {
        let min = self.min_feasible_nodes;
        if nodes < min || profile.percentage_of_nodes_to_score == Some(100) {
            return nodes;
        }
        let pct = match profile.percentage_of_nodes_to_score {
            Some(p) => p as usize,
            None => (50 - (nodes as i64) / 125).max(5) as usize,
        };
        (nodes * pct / 100).max(min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_kube_scheduler() {
        let c = SchedulerConfig::default();
        let p = &c.profiles[0];
        assert_eq!(c.feasible_to_find(p, 50), 50);
        assert_eq!(c.feasible_to_find(p, 100), 100); // 50% of 100 is under the minimum
        assert_eq!(c.feasible_to_find(p, 1000), 1000 * 42 / 100);
        assert_eq!(c.feasible_to_find(p, 5000), 5000 * 10 / 100);
        assert_eq!(c.feasible_to_find(p, 10000), 10000 * 5 / 100);
    }

    #[test]
    fn a_file_sets_percentage_minimum_backoff_and_profiles() {
        let c = SchedulerConfig::parse(
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n\
             percentageOfNodesToScore: 1\nminFeasibleNodesToFind: 15\npodMaxBackoffSeconds: 30\n\
             profiles:\n- schedulerName: default-scheduler\n- schedulerName: batch\n  percentageOfNodesToScore: 100\n",
        )
        .unwrap();
        assert_eq!(c.min_feasible_nodes, 15);
        assert_eq!(c.max_backoff, Duration::from_secs(30));
        let d = c.profile(None).unwrap();
        assert_eq!(c.feasible_to_find(d, 1000), 15);
        assert_eq!(c.feasible_to_find(d, 10), 10);
        let b = c.profile(Some("batch")).unwrap();
        assert_eq!(c.feasible_to_find(b, 1000), 1000);
        assert!(c.profile(Some("other")).is_none());
    }

    #[test]
    fn bad_files_name_the_field() {
        let e = SchedulerConfig::parse("percentageOfNodesToScore: 150\n").unwrap_err();
        assert!(e.contains("percentageOfNodesToScore: Invalid value: 150"), "{e}");
        let e = SchedulerConfig::parse("percentageOfNodes: 10\n").unwrap_err();
        assert!(e.contains("unknown field `percentageOfNodes`"), "{e}");
        let e = SchedulerConfig::parse("kind: Pod\n").unwrap_err();
        assert!(e.contains("KubeSchedulerConfiguration"), "{e}");
        let e = SchedulerConfig::parse("profiles:\n- schedulerName: a\n- schedulerName: a\n").unwrap_err();
        assert!(e.contains("Duplicate value"), "{e}");
        let e = SchedulerConfig::parse("podInitialBackoffSeconds: 20\n").unwrap_err();
        assert!(e.contains("podMaxBackoffSeconds"), "{e}");
    }
}
