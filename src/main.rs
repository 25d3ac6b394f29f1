//! The `rk` executable: parse and validate the command line, set up logging, run.

use std::process::ExitCode;

use rk::cli::{self, CliError, Command};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    rk::mark_start();
    let mut argv = std::env::args_os();
    let invoked_as = argv.next().map(std::path::PathBuf::from);
    if invoked_as.as_ref().and_then(|p| p.file_name()).is_some_and(|n| n == "kubectl") {
        return kubectl(argv.collect());
    }
    let cli = match cli::parse(std::env::args_os()) {
        Ok(c) => c,
        Err(CliError::Clap(e)) if !e.use_stderr() => e.exit(),
        Err(CliError::Clap(e)) => {
            let first = e.render().to_string().lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
            eprintln!("rk: error: {first}");
            return ExitCode::from(2);
        }
        Err(CliError::Message(m)) => {
            eprintln!("rk: error: {m}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Server(args) => {
            let level = args.log_level.clone();
            start(&level, args.into_config(), |cfg, shutdown| async move {
                rk::server::run(cfg, shutdown).await.map_err(anyhow::Error::from)
            })
        }
        Command::Agent(args) => {
            let level = args.log_level.clone();
            start(&level, args.into_config(), rk::agent::run)
        }
        Command::Images(args) => run(images(args)),
        Command::SecretsEncrypt(args) => run(secrets_encrypt(args)),
        Command::Token(args) => run(token(args)),
        Command::Snapshot(args) => run(snapshot(args)),
        Command::Certificate(args) => run(async move { certificate(args) }),
        Command::CheckConfig(args) => check_config(args),
        Command::Kubectl { args } => kubectl(args),
        Command::Completion { shell } => {
            let mut cmd = <cli::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "rk", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
    }
}

/// The admin client and the cluster CA (PEM) from a kubeconfig.
async fn admin_client(path: &std::path::Path) -> anyhow::Result<(kube::Client, String)> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading the admin kubeconfig {}", path.display()))?;
    let kc = kube::config::Kubeconfig::from_yaml(&text)?;
    // The CA exactly as the kubeconfig carries it (the server's PEM, which its token hashes).
    let ca = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.as_deref())
        .and_then(|d| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(d).ok()
        })
        .map(|pem| String::from_utf8_lossy(&pem).into_owned())
        .unwrap_or_default();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok((kube::Client::try_from(cfg)?, ca))
}

fn api_error(e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(s) => anyhow::anyhow!("{}", s.message),
        e => anyhow::anyhow!(e),
    }
}

/// `rk token create|list|delete|generate`: bootstrap token Secrets, through the API.
async fn token(args: cli::TokenArgs) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, DeleteParams, ListParams, PostParams};
    use rk::server::auth::bootstrap;
    if let cli::TokenCommand::Generate = args.command {
        println!("{}", bootstrap::generate());
        return Ok(());
    }
    let (client, ca) = admin_client(&args.kubeconfig).await?;
    let api: Api<Secret> = Api::namespaced(client, bootstrap::NAMESPACE);
    let now = chrono::Utc::now();
    match args.command {
        cli::TokenCommand::Generate => unreachable!("handled above"),
        cli::TokenCommand::Create { token, ttl, description, groups } => {
            let token = token.unwrap_or_else(bootstrap::generate);
            if bootstrap::parse(&token).is_none() || token.contains("::") {
                anyhow::bail!("token {token:?} is not of the form [a-z0-9]{{6}}.[a-z0-9]{{16}}");
            }
            if let Some(g) = groups.iter().find(|g| !g.starts_with("system:bootstrappers:")) {
                anyhow::bail!("--groups {g:?}: extra groups must start with system:bootstrappers:");
            }
            let s: Secret = serde_json::from_value(bootstrap::secret(&token, ttl.0, &description, &groups, now))?;
            api.create(&PostParams::default(), &s).await.map_err(api_error)?;
            let hash = rk::server::tls::ca_hash(&ca);
            println!("K10{hash}::{token}");
        }
        cli::TokenCommand::List => {
            let list = api.list(&ListParams::default().fields(&format!("type={}", bootstrap::SECRET_TYPE))).await;
            let list = list.map_err(api_error)?;
            let rows: Vec<[String; 6]> = list
                .items
                .iter()
                .filter_map(|s| serde_json::to_value(s).ok())
                .filter_map(|s| bootstrap::row(&s, now))
                .collect();
            print_table(["TOKEN", "TTL", "EXPIRES", "USAGES", "DESCRIPTION", "EXTRA GROUPS"], &rows);
        }
        cli::TokenCommand::Delete { tokens } => {
            for t in tokens {
                let id = bootstrap::parse(&t).map(|(id, _)| id.to_string()).unwrap_or(t.clone());
                if id.len() != 6 || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
                    anyhow::bail!("{t:?} is not a token id ([a-z0-9]{{6}}) or token");
                }
                api.delete(&bootstrap::secret_name(&id), &DeleteParams::default()).await.map_err(api_error)?;
                println!("bootstrap token {id:?} deleted");
            }
        }
    }
    Ok(())
}

/// `rk snapshot save|ls|restore|prune|delete`.
async fn snapshot(args: cli::SnapshotArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use rk::embedded::{format, snapshot};
    let db = snapshot::db_dir(&args.data_dir);
    let dir = args.snapshot_dir.clone().unwrap_or_else(|| snapshot::default_dir(&args.data_dir));
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    match args.command {
        cli::SnapshotCommand::Save { name } => {
            if format::read_version(&db)?.is_none() {
                anyhow::bail!("there is no rk store in {}: is --data-dir right?", db.display());
            }
            let saved = match format::lock(&db, std::time::Duration::ZERO) {
                Ok(lock) => {
                    // No server running: read the store directly.
                    drop(lock);
                    eprintln!("Opening the store in {} ...", db.display());
                    let store = rk::embedded::LogStore::open(&db, Default::default())?;
                    eprintln!("Saving a snapshot of revision {} ...", rk::embedded::Storage::current_rev(&store));
                    snapshot::save(&store, &dir, &name, None).map_err(anyhow::Error::msg)?
                }
                Err(_) => {
                    eprintln!("The server is running; asking it for the snapshot ...");
                    let (client, _) = admin_client(&args.kubeconfig).await?;
                    let uri = format!("/v1-rk/snapshots?name={}", urlencode(&name));
                    let req = http::Request::builder().method("POST").uri(uri).body(Vec::new())?;
                    client.request::<snapshot::Saved>(req).await.map_err(api_error)?
                }
            };
            println!(
                "Snapshot {} saved: revision {}, {} objects, {}, {}",
                saved.name,
                saved.revision,
                saved.keys,
                mb(saved.size),
                saved.path.display()
            );
        }
        cli::SnapshotCommand::Ls => {
            let rows: Vec<[String; 5]> = snapshot::list(&dir)
                .map_err(anyhow::Error::msg)?
                .into_iter()
                .map(|i| {
                    let loc = format!("file://{}", i.path.display());
                    match i.header {
                        Ok(h) => [i.name, loc, i.size.to_string(), h.revision.to_string(), h.created],
                        Err(e) => [i.name, loc, i.size.to_string(), "-".into(), format!("unreadable: {e}")],
                    }
                })
                .collect();
            print_table(["Name", "Location", "Size", "Revision", "Created"], &rows);
        }
        cli::SnapshotCommand::Restore { snapshot: file } => {
            let file = if file.exists() || file.components().count() > 1 { file } else { dir.join(file) };
            eprintln!("Checking snapshot {} ...", file.display());
            let r = snapshot::restore(&db, &file).map_err(anyhow::Error::msg)?;
            println!(
                "Restored snapshot {} into {}: revision {}, {} objects, taken {} on {}",
                file.display(),
                db.display(),
                r.header.revision,
                r.header.keys,
                r.header.created,
                r.header.node
            );
            if let Some(p) = r.previous {
                println!("The store it replaced is kept in {}", p.display());
            }
            println!("Start rk server to use it.");
        }
        cli::SnapshotCommand::Prune { name, snapshot_retention } => {
            for n in snapshot::prune(&dir, &name, snapshot_retention).map_err(anyhow::Error::msg)? {
                println!("Snapshot {n} deleted");
            }
        }
        cli::SnapshotCommand::Delete { names } => {
            let known = snapshot::list(&dir).map_err(anyhow::Error::msg)?;
            for n in &names {
                if !known.iter().any(|i| &i.name == n) {
                    anyhow::bail!("there is no snapshot {n:?} in {}", dir.display());
                }
            }
            for n in names {
                let p = dir.join(&n);
                std::fs::remove_file(&p).with_context(|| format!("deleting {}", p.display()))?;
                println!("Snapshot {n} deleted");
            }
        }
    }
    Ok(())
}

/// `rk certificate check|rotate`.
fn certificate(args: cli::CertificateArgs) -> anyhow::Result<()> {
    use rk::server::tls;
    match args.command {
        cli::CertificateCommand::Check { output } => {
            let all = tls::check_all(&args.data_dir);
            if all.is_empty() {
                anyhow::bail!("no certificates under {}: is --data-dir right?", args.data_dir.display());
            }
            let now = chrono::Utc::now().timestamp();
            let rows: Vec<[String; 6]> = all
                .iter()
                .map(|c| {
                    let expires = chrono::DateTime::from_timestamp(c.not_after, 0)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default();
                    let left = c.not_after - now;
                    let residual = if left <= 0 { "0d".into() } else { format!("{}d", left / 86400) };
                    [
                        c.file.display().to_string(),
                        c.subject.clone(),
                        c.usages.clone(),
                        expires,
                        residual,
                        c.status.into(),
                    ]
                })
                .collect();
            if output == "table" {
                print_table(["FILENAME", "SUBJECT", "USAGES", "EXPIRES", "RESIDUAL TIME", "STATUS"], &rows);
            } else {
                for [file, subject, _, expires, residual, status] in rows {
                    let what = match status.as_str() {
                        "OK" => format!("is ok, expires at {expires} ({residual} left)"),
                        "WARNING" => format!("expires at {expires} ({residual} left): rk renews it at its next start"),
                        "EXPIRED" => format!("EXPIRED at {expires}: rk renews it at its next start"),
                        _ => "cannot be read".to_string(),
                    };
                    println!("{file}: certificate {subject} {what}");
                }
            }
        }
        cli::CertificateCommand::Rotate => {
            let done = tls::rotate(&args.data_dir)?;
            if done.is_empty() {
                anyhow::bail!("no certificates under {}: is --data-dir right?", args.data_dir.display());
            }
            for d in done {
                println!("{d}");
            }
            println!(
                "A running server serves the new certificate within seconds; restart rk (or rk agent) to renew the node's."
            );
        }
    }
    Ok(())
}

/// `rk check-config`: prints each check; fails when any check failed.
fn check_config(args: cli::CheckConfigArgs) -> ExitCode {
    use rk::checks::Outcome;
    let checks = rk::checks::run(&args.data_dir, args.https_listen_port);
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &checks {
        let tag = match c.outcome {
            Outcome::Ok => "ok  ",
            Outcome::Warn => "warn",
            Outcome::Fail => "FAIL",
        };
        let fix = if c.fix.is_empty() { String::new() } else { format!(" (fix: {})", c.fix) };
        println!("[{tag}] {:width$}  {}{fix}", c.name, c.detail);
    }
    let failed = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    if failed > 0 {
        println!("{failed} check(s) failed: rk will not run correctly until they are fixed");
        return ExitCode::FAILURE;
    }
    println!("This machine has what rk needs.");
    ExitCode::SUCCESS
}

/// `rk kubectl ...`: kubectl with the admin kubeconfig (unless KUBECONFIG is set).
fn kubectl(args: Vec<std::ffi::OsString>) -> ExitCode {
    use std::os::unix::process::CommandExt;
    // Not rk itself (install.sh's INSTALL_RK_SYMLINK links `kubectl` to rk).
    let me = std::env::current_exe().and_then(std::fs::canonicalize).ok();
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("kubectl"))
            .find(|p| p.is_file() && std::fs::canonicalize(p).ok() != me)
    });
    let Some(bin) = found else {
        eprintln!(
            "rk: error: kubectl is not installed: get it with `apt-get install -y kubectl` from the Kubernetes apt \
             repository, or from https://dl.k8s.io/release/v1.33.0/bin/linux/amd64/kubectl"
        );
        return ExitCode::from(127);
    };
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(&args);
    if std::env::var_os("KUBECONFIG").is_none() {
        let kc = std::env::var_os("RK_KUBECONFIG").unwrap_or_else(|| "/etc/rk/rk.yaml".into());
        cmd.env("KUBECONFIG", kc);
    }
    let e = cmd.exec();
    eprintln!("rk: error: running {}: {e}", bin.display());
    ExitCode::from(126)
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Prints rows under a header, columns padded to their widest cell.
fn print_table<const N: usize>(head: [&str; N], rows: &[[String; N]]) {
    let head = head.map(String::from);
    let mut width = [0usize; N];
    for r in std::iter::once(&head).chain(rows.iter()) {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(&head).chain(rows.iter()) {
        let cells: Vec<String> = r.iter().zip(width).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", cells.join("   ").trim_end());
    }
}

/// `rk secrets-encrypt status|rotate-keys`, through the server's API as its admin.
async fn secrets_encrypt(args: cli::SecretsEncryptArgs) -> anyhow::Result<()> {
    let (client, _) = admin_client(&args.kubeconfig).await?;
    let (method, uri) = match args.command {
        cli::SecretsEncryptCommand::Status => ("GET", "/v1-rk/secrets-encrypt"),
        cli::SecretsEncryptCommand::RotateKeys => ("POST", "/v1-rk/secrets-encrypt?action=rotate-keys"),
    };
    let req = http::Request::builder().method(method).uri(uri).body(Vec::new())?;
    let s: serde_json::Value = client.request(req).await.map_err(api_error)?;
    if let Some(n) = s["reencrypted"].as_u64() {
        println!("Keys rotated: {n} Secrets re-encrypted");
    }
    let enabled = s["enabled"].as_bool().unwrap_or(false);
    println!("Encryption Status: {}", if enabled { "Enabled" } else { "Disabled" });
    println!(
        "Secrets: {} encrypted, {} plaintext",
        s["encryptedSecrets"].as_u64().unwrap_or(0),
        s["plaintextSecrets"].as_u64().unwrap_or(0)
    );
    let keys: Vec<&str> =
        s["keys"].as_array().map(|k| k.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
    if !keys.is_empty() {
        println!();
        println!("Active  Key Type  Name");
        println!("------  --------  ----");
        for k in keys {
            let active = if s["currentKey"].as_str() == Some(k) { " *" } else { "  " };
            println!("{active:<8}AES-GCM   {k}");
        }
    }
    Ok(())
}

/// `rk images import|ls` against rk's containerd (or the one given).
async fn images(args: cli::ImagesArgs) -> anyhow::Result<()> {
    use rk::agent::runtime;
    let socket = args
        .container_runtime_endpoint
        .clone()
        .unwrap_or_else(|| runtime::containerd::ContainerdPaths::new(&args.data_dir).socket);
    let channel = runtime::channel(&socket).await?;
    match args.command {
        cli::ImagesCommand::Import { files } => {
            let importer = runtime::image::Importer::new(channel);
            for f in files {
                let names = importer.import_file(&f).await?;
                for n in names {
                    println!("imported {n} from {}", f.display());
                }
            }
        }
        cli::ImagesCommand::Ls => {
            let list = runtime::image::list(channel).await?;
            let width = list.iter().map(|(n, _)| n.len()).max().unwrap_or(5).max(5);
            println!("{:width$}   DIGEST", "IMAGE");
            for (name, digest) in list {
                println!("{name:width$}   {digest}");
            }
        }
    }
    Ok(())
}

/// Validated configuration → logging → a runtime running `body` until SIGINT/SIGTERM.
fn start<C, F, Fut>(level: &str, cfg: anyhow::Result<C>, body: F) -> ExitCode
where
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rk: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_tracing(level);
    run(async move {
        let shutdown = CancellationToken::new();
        spawn_signal_handler(shutdown.clone());
        body(cfg, shutdown).await
    })
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},hyper=warn,rustls=warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn run(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rk: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rk: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        token.cancel();
    });
}
