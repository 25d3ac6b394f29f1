//! The `rk` executable: parse and validate the command line, set up logging, run.

use std::process::ExitCode;

use rk::cli::{self, CliError, Command};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
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
            let head = ["TOKEN", "TTL", "EXPIRES", "USAGES", "DESCRIPTION", "EXTRA GROUPS"].map(String::from);
            let mut width = [0usize; 6];
            for r in std::iter::once(&head).chain(rows.iter()) {
                for (w, c) in width.iter_mut().zip(r) {
                    *w = (*w).max(c.len());
                }
            }
            for r in std::iter::once(&head).chain(rows.iter()) {
                let cells: Vec<String> = r.iter().zip(width).map(|(c, w)| format!("{c:<w$}")).collect();
                println!("{}", cells.join("   ").trim_end());
            }
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
