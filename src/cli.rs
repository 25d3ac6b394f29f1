//! The command line: clap definitions, and the merge of flags, `RK_*` environment
//! variables and the config file (`/etc/rk/config.yaml` plus `config.yaml.d/*.yaml`),
//! in that order of precedence, validated before anything starts.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::server::ServerConfig;

/// rk: a lightweight Kubernetes distribution in one binary.
#[derive(Parser, Debug)]
#[command(name = "rk", version, about, propagate_version = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the control plane (API server, datastore, controllers).
    Server(ServerArgs),
    /// Run a node that joins a server (or simulated nodes, `--simulate N`).
    Agent(AgentArgs),
    /// Manage the images of rk's containerd (import archives, list).
    Images(ImagesArgs),
    /// Secrets encryption at rest: show its state, or rotate the key.
    SecretsEncrypt(SecretsEncryptArgs),
    /// Bootstrap tokens agents can join with: create, list, delete, generate.
    Token(TokenArgs),
    /// Snapshots of the store: save, ls, restore, prune, delete.
    Snapshot(SnapshotArgs),
    /// The cluster's certificates: check their expiry, rotate them.
    Certificate(CertificateArgs),
    /// Check this machine for what rk needs (kernel, cgroups, containerd, nftables, ports).
    CheckConfig(CheckConfigArgs),
    /// Run kubectl with rk's admin kubeconfig.
    #[command(disable_help_flag = true)]
    Kubectl {
        /// Arguments for kubectl.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `rk snapshot`.
#[derive(Args, Debug, Clone)]
pub struct SnapshotArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: SnapshotCommand,
    /// Directory holding rk's state.
    #[arg(long, env = "RK_DATA_DIR", default_value = "/var/lib/rk", global = true)]
    pub data_dir: PathBuf,
    /// Where snapshots are (default `<data-dir>/server/db/snapshots`).
    #[arg(long, env = "RK_SNAPSHOT_DIR", global = true)]
    pub snapshot_dir: Option<PathBuf>,
    /// The admin kubeconfig, to ask a running server for the snapshot.
    #[arg(long, env = "RK_KUBECONFIG", default_value = "/etc/rk/rk.yaml", global = true)]
    pub kubeconfig: PathBuf,
}

/// `rk snapshot` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum SnapshotCommand {
    /// Snapshot the store now (through the running server, or directly when it is stopped).
    Save {
        /// Name prefix: the file is `<name>-<node>-<unix time>`.
        #[arg(long, default_value = crate::embedded::snapshot::ON_DEMAND)]
        name: String,
    },
    /// List the snapshots.
    #[command(alias = "list")]
    Ls,
    /// Restore a snapshot into the store of a stopped server.
    Restore {
        /// A snapshot's name (in the snapshot dir) or path.
        snapshot: PathBuf,
    },
    /// Delete the oldest snapshots of a name prefix beyond a number to keep.
    Prune {
        /// The name prefix.
        #[arg(long, default_value = crate::embedded::snapshot::ON_DEMAND)]
        name: String,
        /// Snapshots to keep.
        #[arg(long, default_value_t = 5)]
        snapshot_retention: usize,
    },
    /// Delete snapshots by name.
    #[command(alias = "rm")]
    Delete {
        /// Snapshot names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// `rk certificate`.
#[derive(Args, Debug, Clone)]
pub struct CertificateArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CertificateCommand,
    /// Directory holding rk's state.
    #[arg(long, env = "RK_DATA_DIR", default_value = "/var/lib/rk", global = true)]
    pub data_dir: PathBuf,
}

/// `rk certificate` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum CertificateCommand {
    /// Show each certificate's subject, expiry and status.
    Check {
        /// `text` (one line per certificate) or `table`.
        #[arg(long, short = 'o', default_value = "text", value_parser = ["text", "table"])]
        output: String,
    },
    /// Renew the leaf certificates (the CA stays). A running server picks up its new
    /// serving certificate at once; agents renew theirs at their next start.
    Rotate,
}

/// `rk check-config`.
#[derive(Args, Debug, Clone)]
pub struct CheckConfigArgs {
    /// Directory holding rk's state.
    #[arg(long, env = "RK_DATA_DIR", default_value = "/var/lib/rk")]
    pub data_dir: PathBuf,
    /// The API port to check is free.
    #[arg(long, default_value_t = 6443)]
    pub https_listen_port: u16,
}

/// `rk token`.
#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TokenCommand,
    /// The admin kubeconfig of the server.
    #[arg(long, env = "RK_KUBECONFIG", default_value = "/etc/rk/rk.yaml", global = true)]
    pub kubeconfig: PathBuf,
}

/// `rk token` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum TokenCommand {
    /// Create a bootstrap token and print it as `K10<CA hash>::<id>.<secret>`.
    Create {
        /// The token (`[a-z0-9]{6}.[a-z0-9]{16}`); a random one when absent.
        token: Option<String>,
        /// How long it is good for (`90s`, `30m`, `24h`, `7d`); `0` never expires.
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: TokenTtl,
        /// A note on what it is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Extra groups (`system:bootstrappers:...`), comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
    },
    /// List the bootstrap tokens.
    List,
    /// Delete bootstrap tokens (by id or whole token).
    Delete {
        /// Token ids (`abcdef`) or tokens.
        #[arg(required = true)]
        tokens: Vec<String>,
    },
    /// Print a new random token without storing it.
    Generate,
}

/// A token lifetime; None never expires.
#[derive(Clone, Copy, Debug)]
pub struct TokenTtl(pub Option<std::time::Duration>);

fn parse_ttl(s: &str) -> Result<TokenTtl, String> {
    if s == "0" {
        return Ok(TokenTtl(None));
    }
    let bad = || format!("{s:?} is not a duration (90s, 30m, 24h, 7d, or 0 for no expiry)");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(bad()),
    };
    if secs == 0 {
        return Ok(TokenTtl(None));
    }
    Ok(TokenTtl(Some(std::time::Duration::from_secs(secs))))
}

/// `rk secrets-encrypt`.
#[derive(Args, Debug, Clone)]
pub struct SecretsEncryptArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: SecretsEncryptCommand,
    /// The admin kubeconfig of the server.
    #[arg(long, env = "RK_KUBECONFIG", default_value = "/etc/rk/rk.yaml", global = true)]
    pub kubeconfig: PathBuf,
}

/// `rk secrets-encrypt` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum SecretsEncryptCommand {
    /// Whether Secrets are encrypted, with which key, and how many are.
    Status,
    /// Make a new key, re-encrypt every Secret with it, drop the old keys.
    RotateKeys,
}

/// `rk images`.
#[derive(Args, Debug, Clone)]
pub struct ImagesArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ImagesCommand,
    /// Directory holding rk's state (finds rk's containerd socket).
    #[arg(long, env = "RK_DATA_DIR", default_value = "/var/lib/rk", global = true)]
    pub data_dir: PathBuf,
    /// The containerd socket (default: rk's own).
    #[arg(long, env = "RK_CONTAINER_RUNTIME_ENDPOINT", global = true)]
    pub container_runtime_endpoint: Option<PathBuf>,
}

/// `rk images` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum ImagesCommand {
    /// Import image archives (OCI layout or `docker save` tars) into containerd.
    Import {
        /// The archives.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List the images containerd holds for Kubernetes.
    Ls,
}

/// The node flags shared by `rk server` (for its own agent) and `rk agent`.
#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// This node's IP address (InternalIP).
    #[arg(long, env = "RK_NODE_IP")]
    pub node_ip: Option<IpAddr>,
    /// This node's external IP address (ExternalIP; LoadBalancer Services and Ingress
    /// status use it).
    #[arg(long, env = "RK_NODE_EXTERNAL_IP")]
    pub node_external_ip: Option<IpAddr>,
    /// A label for this node, key=value (repeatable).
    #[arg(long, env = "RK_NODE_LABEL", value_delimiter = ',')]
    pub node_label: Vec<String>,
    /// A taint for this node, key=value:Effect (repeatable).
    #[arg(long, env = "RK_NODE_TAINT", value_delimiter = ',')]
    pub node_taint: Vec<String>,
    /// The resolv.conf whose servers the cluster DNS forwards to, and that pods with
    /// `dnsPolicy: Default` get (default: /etc/resolv.conf).
    #[arg(long, env = "RK_RESOLV_CONF")]
    pub resolv_conf: Option<PathBuf>,
    /// How pods on other nodes are reached: host-gw (direct routes, nodes on one L2
    /// segment), vxlan, or auto (host-gw where the node is on a directly connected
    /// network, VXLAN elsewhere). Every node of a cluster should use the same.
    #[arg(long, env = "RK_POD_NETWORK", value_enum, default_value_t = crate::agent::net::routes::PodNetwork::Auto)]
    pub pod_network: crate::agent::net::routes::PodNetwork,
    /// Use this containerd socket instead of starting rk's own containerd.
    #[arg(long, env = "RK_CONTAINER_RUNTIME_ENDPOINT")]
    pub container_runtime_endpoint: Option<PathBuf>,
    /// Registry mirrors, credentials and TLS (k3s's registries.yaml format) for rk's
    /// containerd [default: /etc/rk/registries.yaml, if it exists].
    #[arg(long, env = "RK_PRIVATE_REGISTRY", value_name = "FILE")]
    pub private_registry: Option<PathBuf>,
    /// Node-pressure eviction and image garbage collection.
    #[command(flatten)]
    pub eviction: crate::agent::kubelet::eviction::EvictionArgs,
}

/// Validated node flags: labels and taints.
pub type NodeFlags = (std::collections::BTreeMap<String, String>, Vec<k8s_openapi::api::core::v1::Taint>);

impl NodeArgs {
    /// Labels and taints, checked.
    pub fn parse(&self) -> anyhow::Result<NodeFlags> {
        self.eviction.check().map_err(anyhow::Error::msg)?;
        let mut labels = std::collections::BTreeMap::new();
        for l in &self.node_label {
            let Some((k, v)) = l.split_once('=') else {
                anyhow::bail!("--node-label {l:?} is not key=value");
            };
            labels.insert(k.to_string(), v.to_string());
        }
        let bad = crate::server::auth::node::forbidden_labels(labels.keys());
        if !bad.is_empty() {
            anyhow::bail!(
                "--node-label: a node may not give itself {} (labels under kubernetes.io and k8s.io must be kubelet.kubernetes.io/, node.kubernetes.io/ or a kubelet label such as topology.kubernetes.io/zone)",
                bad.join(", ")
            );
        }
        let taints = self
            .node_taint
            .iter()
            .map(|t| crate::agent::kubelet::node::parse_taint(t).map_err(|e| anyhow::anyhow!("--node-taint: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((labels, taints))
    }
}

/// Flags of `rk agent`. Each is also `RK_<FLAG>` and a key of the config file.
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Config file (YAML, keys are the long flag names); `<file>.d/*.yaml` is read after it.
    #[arg(long, env = "RK_CONFIG", default_value = "/etc/rk/config.yaml")]
    pub config: PathBuf,
    /// Directory holding rk's state.
    #[arg(long, env = "RK_DATA_DIR", default_value = "/var/lib/rk")]
    pub data_dir: PathBuf,
    /// The server to join, `https://SERVER:6443`.
    #[arg(long, visible_alias = "server", env = "RK_URL")]
    pub join: Option<String>,
    /// The join token (`K10<CA hash>::server:<secret>`, from the server's data dir).
    #[arg(long, env = "RK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The server CA (PEM), needed when the token carries no CA hash.
    #[arg(long, env = "RK_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// This node's name (default: the host name); with --simulate, the name prefix.
    #[arg(long, env = "RK_NODE_NAME")]
    pub node_name: Option<String>,
    /// Register this many simulated nodes (no containers) instead of a real one.
    #[arg(long, env = "RK_SIMULATE", default_value_t = 0)]
    pub simulate: usize,
    /// Allocatable CPU of each simulated node.
    #[arg(long, env = "RK_SIMULATE_CPU", default_value = "4")]
    pub simulate_cpu: String,
    /// Allocatable memory of each simulated node.
    #[arg(long, env = "RK_SIMULATE_MEMORY", default_value = "8Gi")]
    pub simulate_memory: String,
    /// Pods each simulated node takes.
    #[arg(long, env = "RK_SIMULATE_PODS", default_value_t = 110)]
    pub simulate_pods: u32,
    /// Seconds a simulated pod with restartPolicy Never or OnFailure runs before it succeeds.
    #[arg(long, env = "RK_SIMULATE_RUN_SECONDS", default_value_t = 5)]
    pub simulate_run_seconds: u64,
    /// The cluster's pod network (podCIDRs of simulated nodes come from it).
    #[arg(long, env = "RK_CLUSTER_CIDR", default_value = "10.42.0.0/16")]
    pub cluster_cidr: ipnet::Ipv4Net,
    /// The cluster DNS Service IP given to pods.
    #[arg(long, env = "RK_CLUSTER_DNS", default_value = "10.43.0.10")]
    pub cluster_dns: IpAddr,
    /// The cluster DNS domain.
    #[arg(long, env = "RK_CLUSTER_DOMAIN", default_value = "cluster.local", value_parser = parse_domain)]
    pub cluster_domain: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub node: NodeArgs,
    /// Log level: error, warn, info, debug, trace, or a number 0-10 (0 = info).
    #[arg(short = 'v', long, env = "RK_LOG_LEVEL", default_value = "info", value_parser = parse_log_level)]
    pub log_level: String,
}

impl AgentArgs {
    /// The validated agent configuration.
    pub fn into_config(self) -> anyhow::Result<crate::agent::AgentConfig> {
        let Some(server) = self.join.filter(|s| !s.is_empty()) else {
            anyhow::bail!("--join (or RK_URL) is required: the server to join, https://SERVER:6443");
        };
        let Some(token) = self.token.filter(|s| !s.is_empty()) else {
            anyhow::bail!("--token (or RK_TOKEN) is required: the server's join token");
        };
        if crate::quantity_invalid(&self.simulate_cpu) {
            anyhow::bail!("--simulate-cpu {:?} is not a quantity", self.simulate_cpu);
        }
        if crate::quantity_invalid(&self.simulate_memory) {
            anyhow::bail!("--simulate-memory {:?} is not a quantity", self.simulate_memory);
        }
        let node_name = match self.node_name {
            Some(n) => n,
            None => crate::default_node_name(),
        };
        if let Some(e) = crate::api::validation::dns1123_subdomain(&node_name).first() {
            anyhow::bail!("--node-name {node_name:?}: {e}");
        }
        let (labels, taints) = self.node.parse()?;
        Ok(crate::agent::AgentConfig {
            server,
            token,
            ca_file: self.ca_file,
            data_dir: self.data_dir,
            node_name,
            simulate: self.simulate,
            simulate_cpu: self.simulate_cpu,
            simulate_memory: self.simulate_memory,
            simulate_pods: self.simulate_pods,
            simulate_run_for: std::time::Duration::from_secs(self.simulate_run_seconds),
            cluster_cidr: self.cluster_cidr.trunc(),
            node_ip: self.node.node_ip,
            node_external_ip: self.node.node_external_ip,
            resolv_conf: self.node.resolv_conf.clone(),
            pod_network: self.node.pod_network,
            node_labels: labels,
            node_taints: taints,
            eviction: self.node.eviction,
            runtime_endpoint: self.node.container_runtime_endpoint,
            registries: crate::agent::runtime::registries::Registries::load(self.node.private_registry.as_deref())?,
            cluster_dns: self.cluster_dns.to_string(),
            cluster_domain: self.cluster_domain,
        })
    }
}

/// Flags of `rk server`. Each is also `RK_<FLAG>` and a key of the config file.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Config file (YAML, keys are the long flag names); `<file>.d/*.yaml` is read after it.
    #[arg(long, env = "RK_CONFIG", default_value = "/etc/rk/config.yaml")]
    pub config: PathBuf,
    /// Directory holding rk's state.
    #[arg(long, env = "RK_DATA_DIR", default_value = "/var/lib/rk")]
    pub data_dir: PathBuf,
    /// Address the API server listens on.
    #[arg(long, env = "RK_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// Port of the API server.
    #[arg(long, env = "RK_HTTPS_LISTEN_PORT", default_value_t = 6443)]
    pub https_listen_port: u16,
    /// Where to write the admin kubeconfig.
    #[arg(long, env = "RK_WRITE_KUBECONFIG", default_value = "/etc/rk/rk.yaml")]
    pub write_kubeconfig: PathBuf,
    /// File mode of the admin kubeconfig, octal.
    #[arg(long, env = "RK_WRITE_KUBECONFIG_MODE", default_value = "0600", value_parser = parse_mode)]
    pub write_kubeconfig_mode: u32,
    /// Shared secret agents join with (generated when absent).
    #[arg(long, env = "RK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Extra host name or IP for the serving certificate (repeatable).
    #[arg(long, env = "RK_TLS_SAN", value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// Pod network CIDR.
    #[arg(long, env = "RK_CLUSTER_CIDR", default_value = "10.42.0.0/16")]
    pub cluster_cidr: ipnet::Ipv4Net,
    /// Service network CIDR.
    #[arg(long, env = "RK_SERVICE_CIDR", default_value = "10.43.0.0/16")]
    pub service_cidr: ipnet::Ipv4Net,
    /// Cluster DNS domain.
    #[arg(long, env = "RK_CLUSTER_DOMAIN", default_value = "cluster.local", value_parser = parse_domain)]
    pub cluster_domain: String,
    /// This node's name (default: the host name).
    #[arg(long, env = "RK_NODE_NAME")]
    pub node_name: Option<String>,
    /// Run no agent in the server process.
    #[arg(long, env = "RK_DISABLE_AGENT")]
    pub disable_agent: bool,
    /// Run no controllers (ReplicaSets, Deployments, garbage collection, nodes, ...).
    #[arg(long, env = "RK_DISABLE_CONTROLLER_MANAGER")]
    pub disable_controller_manager: bool,
    /// Run no scheduler.
    #[arg(long, env = "RK_DISABLE_SCHEDULER")]
    pub disable_scheduler: bool,
    /// The scheduler's configuration: a kubescheduler.config.k8s.io/v1
    /// KubeSchedulerConfiguration (percentageOfNodesToScore, backoff, profiles).
    #[arg(long, env = "RK_SCHEDULER_CONFIG", value_name = "FILE")]
    pub scheduler_config: Option<PathBuf>,
    /// Store Secrets encrypted (AES-GCM, keys under the data dir).
    #[arg(long, env = "RK_SECRETS_ENCRYPTION")]
    pub secrets_encryption: bool,
    /// Write an audit log (JSON lines of audit.k8s.io/v1 Events) here; `-` is stdout.
    #[arg(long, env = "RK_AUDIT_LOG_PATH")]
    pub audit_log_path: Option<PathBuf>,
    /// The audit policy (audit.k8s.io/v1 Policy); without one every request is logged at Metadata.
    #[arg(long, env = "RK_AUDIT_POLICY_FILE")]
    pub audit_policy_file: Option<PathBuf>,
    /// Days to keep rotated audit logs (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub audit_log_maxage: u64,
    /// Rotated audit logs to keep (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub audit_log_maxbackup: usize,
    /// Size in megabytes at which the audit log is rotated (0: never).
    #[arg(long, default_value_t = 0)]
    pub audit_log_maxsize: u64,
    /// How often to snapshot the store (`12h`, `30m`, ...; `0` for never). Snapshots
    /// are aligned to the clock: `12h` takes them at 00:00 and 12:00 UTC.
    #[arg(long, env = "RK_SNAPSHOT_INTERVAL", default_value = "12h", value_parser = parse_ttl)]
    pub snapshot_interval: TokenTtl,
    /// Scheduled snapshots to keep.
    #[arg(long, env = "RK_SNAPSHOT_RETENTION", default_value_t = 5)]
    pub snapshot_retention: usize,
    /// Where snapshots go (default `<data-dir>/server/db/snapshots`).
    #[arg(long, env = "RK_SNAPSHOT_DIR")]
    pub snapshot_dir: Option<PathBuf>,
    /// Take no scheduled snapshots.
    #[arg(long, env = "RK_DISABLE_SNAPSHOTS")]
    pub disable_snapshots: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub node: NodeArgs,
    /// Log level: error, warn, info, debug, trace, or a number 0-10 (0 = info).
    #[arg(short = 'v', long, env = "RK_LOG_LEVEL", default_value = "info", value_parser = parse_log_level)]
    pub log_level: String,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let m =
        u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|_| format!("{s:?} is not an octal file mode"))?;
    if m > 0o777 {
        return Err(format!("{s:?} is not a file mode (at most 0777)"));
    }
    Ok(m)
}

fn parse_domain(s: &str) -> Result<String, String> {
    match crate::api::validation::dns1123_subdomain(s).first() {
        None => Ok(s.to_string()),
        Some(e) => Err(e.clone()),
    }
}

fn parse_log_level(s: &str) -> Result<String, String> {
    let l = s.to_ascii_lowercase();
    match l.as_str() {
        "error" | "warn" | "info" | "debug" | "trace" => Ok(l),
        n => match n.parse::<u8>() {
            Ok(0) => Ok("info".into()),
            Ok(1..=3) => Ok("debug".into()),
            Ok(4..=10) => Ok("trace".into()),
            _ => Err(format!("{s:?} is not a log level (error, warn, info, debug, trace, or 0-10)")),
        },
    }
}

impl ServerArgs {
    /// The validated server configuration.
    pub fn into_config(self) -> anyhow::Result<ServerConfig> {
        if self.cluster_cidr.contains(&self.service_cidr.network())
            || self.service_cidr.contains(&self.cluster_cidr.network())
        {
            anyhow::bail!("--cluster-cidr {} and --service-cidr {} overlap", self.cluster_cidr, self.service_cidr);
        }
        if self.service_cidr.prefix_len() > 28 {
            anyhow::bail!("--service-cidr {} is too small (at most /28)", self.service_cidr);
        }
        if self.cluster_cidr.prefix_len() > 24 {
            anyhow::bail!("--cluster-cidr {} is too small for a /24 per node (at most /24)", self.cluster_cidr);
        }
        let node_name = match self.node_name {
            Some(n) => n,
            None => crate::default_node_name(),
        };
        if let Some(e) = crate::api::validation::dns1123_subdomain(&node_name).first() {
            anyhow::bail!("--node-name {node_name:?}: {e}");
        }
        let (node_labels, node_taints) = self.node.parse()?;
        let audit = match (self.audit_log_path, &self.audit_policy_file) {
            (None, Some(_)) => anyhow::bail!("--audit-policy-file needs --audit-log-path"),
            (None, None) => None,
            (Some(path), policy) => Some(crate::server::audit::AuditConfig {
                path,
                policy: std::sync::Arc::new(match policy {
                    Some(f) => crate::server::audit::Policy::load(f).map_err(anyhow::Error::msg)?,
                    None => crate::server::audit::Policy::metadata_for_all(),
                }),
                max_age_days: self.audit_log_maxage,
                max_backups: self.audit_log_maxbackup,
                max_size_mb: self.audit_log_maxsize,
            }),
        };
        if self.snapshot_retention == 0 {
            anyhow::bail!("--snapshot-retention must be at least 1");
        }
        Ok(ServerConfig {
            audit,
            snapshots: crate::server::SnapshotConfig {
                dir: self.snapshot_dir.unwrap_or_else(|| crate::embedded::snapshot::default_dir(&self.data_dir)),
                interval: self.snapshot_interval.0.filter(|_| !self.disable_snapshots),
                retention: self.snapshot_retention,
            },
            data_dir: self.data_dir,
            bind_address: self.bind_address,
            https_listen_port: self.https_listen_port,
            write_kubeconfig: self.write_kubeconfig,
            write_kubeconfig_mode: self.write_kubeconfig_mode,
            token: self.token.filter(|t| !t.is_empty()),
            tls_san: self.tls_san,
            cluster_cidr: self.cluster_cidr.trunc(),
            service_cidr: self.service_cidr.trunc(),
            cluster_domain: self.cluster_domain,
            node_name,
            disable_agent: self.disable_agent,
            node_monitor_grace: crate::server::NODE_MONITOR_GRACE,
            disable_controller_manager: self.disable_controller_manager,
            disable_scheduler: self.disable_scheduler,
            scheduler_config: match &self.scheduler_config {
                Some(f) => crate::server::scheduler::SchedulerConfig::load(f)?,
                None => Default::default(),
            },
            secrets_encryption: self.secrets_encryption,
            node_ip: self.node.node_ip,
            node_external_ip: self.node.node_external_ip,
            resolv_conf: self.node.resolv_conf.clone(),
            pod_network: self.node.pod_network,
            node_labels,
            node_taints,
            eviction: self.node.eviction,
            runtime_endpoint: self.node.container_runtime_endpoint,
            registries: match self.disable_agent {
                true => Default::default(),
                false => crate::agent::runtime::registries::Registries::load(self.node.private_registry.as_deref())?,
            },
        })
    }
}

/// A command-line problem: clap's own (help, version, usage), or a config file error.
#[derive(Debug)]
pub enum CliError {
    /// From clap: print with `exit()`.
    Clap(clap::Error),
    /// A one-line error.
    Message(String),
}

/// One key of a config file.
struct FileEntry {
    file: PathBuf,
    key: String,
    value: serde_norway::Value,
}

fn load_file(path: &Path, out: &mut Vec<FileEntry>) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading config file {}: {e}", path.display()))?;
    if text.trim().is_empty() {
        return Ok(());
    }
    let v: serde_norway::Value =
        serde_norway::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?;
    let map = match v {
        serde_norway::Value::Null => return Ok(()),
        serde_norway::Value::Mapping(m) => m,
        _ => return Err(format!("config file {}: expected a mapping of flag names to values", path.display())),
    };
    for (k, v) in map {
        let key = k.as_str().ok_or_else(|| format!("config file {}: keys must be strings", path.display()))?;
        out.push(FileEntry { file: path.to_path_buf(), key: key.to_string(), value: v });
    }
    Ok(())
}

fn scalar(v: &serde_norway::Value) -> Option<String> {
    match v {
        serde_norway::Value::String(s) => Some(s.clone()),
        serde_norway::Value::Number(n) => Some(n.to_string()),
        serde_norway::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The flags one config entry stands for, or an error naming file and key.
fn entry_args(e: &FileEntry, arg: &clap::Arg) -> Result<Vec<String>, String> {
    let flag = format!("--{}", e.key);
    let bad = |why: &str| format!("config file {}: key {:?}: {why}", e.file.display(), e.key);
    let is_flag = matches!(arg.get_action(), clap::ArgAction::SetTrue);
    if is_flag {
        return match &e.value {
            serde_norway::Value::Bool(true) => Ok(vec![flag]),
            serde_norway::Value::Bool(false) => Ok(vec![]),
            _ => Err(bad("expected true or false")),
        };
    }
    let multi = matches!(arg.get_action(), clap::ArgAction::Append);
    match &e.value {
        serde_norway::Value::Sequence(items) if multi => items
            .iter()
            .map(|i| scalar(i).map(|s| format!("{flag}={s}")).ok_or_else(|| bad("list items must be scalars")))
            .collect(),
        serde_norway::Value::Sequence(_) => Err(bad("expected a single value, not a list")),
        v => scalar(v).map(|s| vec![format!("{flag}={s}")]).ok_or_else(|| bad("expected a scalar value")),
    }
}

/// Parses the command line, then merges the config file under flags and env.
pub fn parse<I: IntoIterator<Item = OsString>>(argv: I) -> Result<Cli, CliError> {
    let argv: Vec<OsString> = argv.into_iter().collect();
    let cmd = Cli::command();
    let matches = cmd.clone().try_get_matches_from(&argv).map_err(CliError::Clap)?;
    let Some((subname, sub)) = matches.subcommand().filter(|(n, _)| *n == "server" || *n == "agent") else {
        return Cli::from_arg_matches(&matches).map_err(CliError::Clap);
    };
    let config: PathBuf = sub.get_one::<PathBuf>("config").cloned().unwrap_or_default();
    let explicit = matches!(sub.value_source("config"), Some(ValueSource::CommandLine | ValueSource::EnvVariable));
    let mut entries = Vec::new();
    if config.exists() {
        load_file(&config, &mut entries).map_err(CliError::Message)?;
    } else if explicit {
        return Err(CliError::Message(format!("config file {} does not exist", config.display())));
    }
    let dropins = PathBuf::from(format!("{}.d", config.display()));
    if let Ok(rd) = std::fs::read_dir(&dropins) {
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        for f in files {
            load_file(&f, &mut entries).map_err(CliError::Message)?;
        }
    }
    if entries.is_empty() {
        return Cli::from_arg_matches(&matches).map_err(CliError::Clap);
    }
    let server_cmd = cmd.find_subcommand(subname).expect("known subcommand").clone();
    // Later files win: keep the last entry of each key.
    let mut last: Vec<FileEntry> = Vec::new();
    for e in entries {
        last.retain(|x| x.key != e.key);
        last.push(e);
    }
    let mut extra = Vec::new();
    for e in &last {
        let id = e.key.replace('-', "_");
        let Some(arg) =
            server_cmd.get_arguments().find(|a| a.get_id() == id.as_str() && a.get_long() == Some(e.key.as_str()))
        else {
            return Err(CliError::Message(format!("config file {}: unknown key {:?}", e.file.display(), e.key)));
        };
        if id == "config" {
            return Err(CliError::Message(format!(
                "config file {}: key \"config\" cannot be set in a config file",
                e.file.display()
            )));
        }
        if matches!(sub.value_source(&id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        let args = entry_args(e, arg).map_err(CliError::Message)?;
        // Check each key on its own so an error can name it.
        let mut probe = argv.clone();
        probe.extend(args.iter().map(OsString::from));
        if let Err(err) = cmd.clone().try_get_matches_from(&probe) {
            let first = err.render().to_string().lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
            return Err(CliError::Message(format!("config file {}: key {:?}: {first}", e.file.display(), e.key)));
        }
        extra.extend(args);
    }
    let mut full = argv;
    full.extend(extra.into_iter().map(OsString::from));
    let matches = cmd.try_get_matches_from(&full).map_err(CliError::Clap)?;
    Cli::from_arg_matches(&matches).map_err(CliError::Clap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(args: &[&str]) -> Result<ServerArgs, CliError> {
        let mut v: Vec<OsString> = vec!["rk".into(), "server".into()];
        v.extend(args.iter().map(OsString::from));
        parse(v).map(|c| match c.command {
            Command::Server(s) => s,
            _ => panic!("not a server command"),
        })
    }

    #[test]
    fn agent_flags_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.yaml");
        std::fs::write(&f, "join: https://10.0.0.1:6443\ntoken: from-file\nsimulate: 3\n").unwrap();
        let argv: Vec<OsString> = ["rk", "agent", "--config", f.to_str().unwrap(), "--token", "from-flag"]
            .iter()
            .map(OsString::from)
            .collect();
        let Command::Agent(a) = parse(argv).unwrap_or_else(|_| panic!("parses")).command else { panic!("agent") };
        let cfg = a.into_config().unwrap();
        assert_eq!(cfg.server, "https://10.0.0.1:6443");
        assert_eq!(cfg.token, "from-flag", "flag beats file");
        assert_eq!(cfg.simulate, 3);
        std::fs::write(&f, "simulate-cpu: lots\n").unwrap();
        let argv: Vec<OsString> =
            ["rk", "agent", "--config", f.to_str().unwrap(), "--join", "https://a:1", "--token", "t"]
                .iter()
                .map(OsString::from)
                .collect();
        let Command::Agent(a) = parse(argv).unwrap_or_else(|_| panic!("parses")).command else { panic!("agent") };
        assert!(a.into_config().unwrap_err().to_string().contains("--simulate-cpu"));
        std::fs::write(&f, "bogus: 1\n").unwrap();
        let argv: Vec<OsString> = ["rk", "agent", "--config", f.to_str().unwrap()].iter().map(OsString::from).collect();
        match parse(argv) {
            Err(CliError::Message(m)) => assert!(m.contains("unknown key \"bogus\""), "{m}"),
            _ => panic!("unknown key refused"),
        }
    }

    #[test]
    fn config_file_under_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.yaml");
        std::fs::write(&f, "https-listen-port: 7443\ntls-san: [a.example, 10.0.0.9]\ndisable-agent: true\ncluster-domain: corp.local\n").unwrap();
        std::fs::create_dir(dir.path().join("config.yaml.d")).unwrap();
        std::fs::write(dir.path().join("config.yaml.d/10-x.yaml"), "cluster-domain: later.local\n").unwrap();
        let cfg = f.to_str().unwrap();
        let s = server(&["--config", cfg]).ok().unwrap();
        assert_eq!(s.https_listen_port, 7443);
        assert_eq!(s.tls_san, vec!["a.example", "10.0.0.9"]);
        assert!(s.disable_agent);
        assert_eq!(s.cluster_domain, "later.local");
        let s = server(&["--config", cfg, "--https-listen-port", "8443"]).ok().unwrap();
        assert_eq!(s.https_listen_port, 8443);
    }

    #[test]
    fn config_file_errors_name_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.yaml");
        std::fs::write(&f, "no-such-flag: 1\n").unwrap();
        match server(&["--config", f.to_str().unwrap()]) {
            Err(CliError::Message(m)) => assert!(m.contains("unknown key \"no-such-flag\""), "{m}"),
            other => panic!("expected an error, got {other:?}"),
        }
        std::fs::write(&f, "https-listen-port: http\n").unwrap();
        match server(&["--config", f.to_str().unwrap()]) {
            Err(CliError::Message(m)) => {
                assert!(m.contains("key \"https-listen-port\""), "{m}");
                assert_eq!(m.lines().count(), 1, "{m}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
        match server(&["--config", dir.path().join("missing.yaml").to_str().unwrap()]) {
            Err(CliError::Message(m)) => assert!(m.contains("does not exist"), "{m}"),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn values_are_checked() {
        assert!(server(&["--config", "/nonexistent-default-is-fine", "--write-kubeconfig-mode", "0999"]).is_err());
        let s = server(&["--config", "/dev/null", "--write-kubeconfig-mode", "644", "-v", "2"]).ok().unwrap();
        assert_eq!(s.write_kubeconfig_mode, 0o644);
        assert_eq!(s.log_level, "debug");
        let s = server(&["--config", "/dev/null", "--cluster-cidr", "10.43.0.0/16"]).ok().unwrap();
        assert!(s.into_config().is_err(), "overlapping CIDRs are refused");
    }
}
