//! The Job controller: runs pods until `completions` succeed (or, without completions,
//! until one succeeds and none is active), `parallelism` at a time, in NonIndexed or
//! Indexed mode; fails the Job past `backoffLimit` failed pods or
//! `activeDeadlineSeconds`; honours `suspend`; deletes finished Jobs after
//! `ttlSecondsAfterFinished`. Conditions and counts as Kubernetes reports them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use kube::runtime::controller::Action;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::pod_cache::PodCache;
use super::{Ctx, pod_ready};

const INDEX: &str = "batch.kubernetes.io/job-completion-index";

pub(super) async fn run(ctx: Arc<Ctx>, pods: Arc<PodCache>, shutdown: CancellationToken) {
    super::run_owning_pods::<Job, _, _>(ctx, pods, shutdown, reconcile).await;
}

fn finished(job: &Job) -> Option<(String, Option<Timestamp>)> {
    job.status.as_ref()?.conditions.as_ref()?.iter().find_map(|c| {
        ((c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
            .then(|| (c.type_.clone(), c.last_transition_time.as_ref().map(|t| t.0)))
    })
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn index_of(p: &Pod) -> Option<i32> {
    p.annotations().get(INDEX).and_then(|i| i.parse().ok())
}

fn cond(type_: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Compresses a set of indexes as Kubernetes writes `completedIndexes` ("1,3-5").
fn ranges(set: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = set.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end = it.next().unwrap_or(end);
        }
        out.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    out.join(",")
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>, cache: Arc<PodCache>) -> Result<Action, kube::Error> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let now = Timestamp::now();
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = job.spec.clone().unwrap_or_default();
    if let Some((_, at)) = finished(&job) {
        let Some(ttl) = spec.ttl_seconds_after_finished else { return Ok(Action::await_change()) };
        let at = at.map(|t| t.as_second()).unwrap_or(now.as_second());
        let left = at + i64::from(ttl) - now.as_second();
        if left > 0 {
            return Ok(Action::requeue(Duration::from_secs(left as u64)));
        }
        let dp =
            DeleteParams { propagation_policy: Some(kube::api::PropagationPolicy::Background), ..Default::default() };
        match jobs.delete(&name, &dp).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(e),
        }
        return Ok(Action::await_change());
    }

    let uid = job.uid().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    // The pods it controls that its selector matches, from the shared cache once that
    // has seen this Job's last writes.
    let selected = match spec.selector.as_ref() {
        Some(sel) => match super::pod_matcher(sel, &format!("{ns}/{name}")) {
            Some(m) => Some(m),
            None => return Ok(Action::await_change()),
        },
        None => None,
    };
    let owned = cache.owned(&uid).await;
    let pods: Vec<&Pod> = owned.iter().map(|p| p.as_ref()).filter(|p| selected.as_ref().is_none_or(|m| m(p))).collect();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let succeeded_pods: Vec<&Pod> = pods.iter().copied().filter(|p| phase(p) == "Succeeded").collect();
    let failed = pods.iter().filter(|p| phase(p) == "Failed").count() as i32;
    let active: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !matches!(phase(p), "Succeeded" | "Failed"))
        .collect();
    let done_indexes: BTreeSet<i32> = succeeded_pods.iter().filter_map(|p| index_of(p)).collect();
    let succeeded = if indexed { done_indexes.len() as i32 } else { succeeded_pods.len() as i32 };
    let suspended = spec.suspend.unwrap_or(false);
    let parallelism = if suspended { 0 } else { spec.parallelism.unwrap_or(1).max(0) };
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let start = job.status.as_ref().and_then(|s| s.start_time.clone()).or_else(|| (!suspended).then(|| Time(now)));

    let mut conditions = job.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let mut completion_time = None;
    let mut terminal: Option<(&str, &str, String)> = None;
    if failed > backoff_limit {
        terminal = Some(("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit".into()));
    } else if let (Some(ads), Some(st)) = (spec.active_deadline_seconds, start.as_ref())
        && now.as_second() - st.0.as_second() >= ads
    {
        terminal = Some(("Failed", "DeadlineExceeded", "Job was active longer than specified deadline".into()));
    } else {
        let complete = match spec.completions {
            Some(c) => succeeded >= c,
            None => succeeded > 0 && active.is_empty(),
        };
        if complete {
            terminal = Some(("Complete", "CompletionsReached", "Reached expected number of succeeded pods".into()));
        }
    }

    let mut created = 0;
    if let Some((kind, reason, message)) = &terminal {
        for p in &active {
            if let Ok(gone) = pods_api.delete(&p.name_any(), &DeleteParams::default()).await {
                cache.expect_delete(&uid, &ns, &p.name_any(), gone.left().as_ref());
            }
        }
        if *kind == "Failed" {
            conditions.push(cond("FailureTarget", reason, message, now));
            conditions.push(cond("Failed", reason, message, now));
            ctx.event(job.as_ref(), true, reason, message.clone());
        } else {
            conditions.push(cond("SuccessCriteriaMet", reason, message, now));
            conditions.push(cond("Complete", reason, message, now));
            completion_time = Some(Time(now));
            ctx.event(job.as_ref(), false, "Completed", "Job completed".into());
        }
    } else {
        // How many should run now.
        let remaining = spec.completions.map(|c| c - succeeded).unwrap_or(if succeeded > 0 { 0 } else { parallelism });
        let want = parallelism.min(remaining.max(0)) as usize;
        if active.len() > want {
            for p in &active[want..] {
                if let Ok(gone) = pods_api.delete(&p.name_any(), &DeleteParams::default()).await {
                    cache.expect_delete(&uid, &ns, &p.name_any(), gone.left().as_ref());
                }
            }
        }
        let running_indexes: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
        let mut next_indexes =
            (0..spec.completions.unwrap_or(0)).filter(|i| !done_indexes.contains(i) && !running_indexes.contains(i));
        let template = spec.template.clone();
        for _ in active.len()..want {
            let mut meta = template.metadata.clone().unwrap_or_default();
            let mut pspec = template.spec.clone();
            if indexed {
                let Some(i) = next_indexes.next() else { break };
                meta.annotations.get_or_insert_with(Default::default).insert(INDEX.into(), i.to_string());
                meta.labels.get_or_insert_with(Default::default).insert(INDEX.into(), i.to_string());
                if let Some(ps) = pspec.as_mut() {
                    ps.hostname = Some(format!("{name}-{i}"));
                }
            }
            let pod = Pod {
                metadata: ObjectMeta {
                    generate_name: Some(if indexed {
                        format!(
                            "{name}-{}-",
                            meta.annotations.as_ref().and_then(|a| a.get(INDEX)).cloned().unwrap_or_default()
                        )
                    } else {
                        format!("{name}-")
                    }),
                    namespace: Some(ns.clone()),
                    labels: meta.labels,
                    annotations: meta.annotations,
                    owner_references: Some(vec![super::controller_ref(job.as_ref())]),
                    ..Default::default()
                },
                spec: pspec,
                status: None,
            };
            match pods_api.create(&PostParams::default(), &pod).await {
                Ok(p) => {
                    cache.expect(&uid, Some(&p), None);
                    created += 1;
                    ctx.event(job.as_ref(), false, "SuccessfulCreate", format!("Created pod: {}", p.name_any()));
                }
                Err(e) => {
                    ctx.event(job.as_ref(), true, "FailedCreate", format!("Error creating: {e}"));
                    return Err(e);
                }
            }
        }
        if suspended && !conditions.iter().any(|c| c.type_ == "Suspended" && c.status == "True") {
            conditions.retain(|c| c.type_ != "Suspended");
            conditions.push(cond("Suspended", "JobSuspended", "Job suspended", now));
        } else if !suspended {
            conditions.retain(|c| c.type_ != "Suspended");
        }
    }

    let status = JobStatus {
        active: Some(if terminal.is_some() { 0 } else { active.len() as i32 + created }).filter(|a| *a > 0),
        succeeded: Some(succeeded).filter(|s| *s > 0),
        failed: Some(failed).filter(|f| *f > 0),
        ready: Some(active.iter().filter(|p| pod_ready(p)).count() as i32),
        terminating: Some(0),
        start_time: start,
        completion_time: completion_time.or_else(|| job.status.as_ref().and_then(|s| s.completion_time.clone())),
        completed_indexes: indexed.then(|| ranges(&done_indexes)).filter(|r| !r.is_empty()),
        conditions: (!conditions.is_empty()).then_some(conditions),
        uncounted_terminated_pods: Some(Default::default()),
        failed_indexes: None,
    };
    if job.status.as_ref() != Some(&status) {
        // A merge patch keeps what it omits: counts that dropped to none are nulled.
        let mut v = serde_json::to_value(&status).unwrap_or_default();
        for k in ["active", "succeeded", "failed", "completedIndexes", "completionTime"] {
            if v.get(k).is_none() {
                v[k] = serde_json::Value::Null;
            }
        }
        jobs.patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": v}))).await?;
    }
    // activeDeadlineSeconds passes without an event to say so.
    Ok(match (spec.active_deadline_seconds, status.start_time.as_ref()) {
        (Some(ads), Some(st)) if terminal.is_none() => {
            Action::requeue(Duration::from_secs((st.0.as_second() + ads - now.as_second()).max(1) as u64))
        }
        _ => Action::await_change(),
    })
}
