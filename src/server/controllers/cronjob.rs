//! The CronJob controller: creates a Job at each time the schedule names (five-field
//! cron or `@hourly`-style macros, in `spec.timeZone` or UTC), named
//! `<cronjob>-<scheduled time in minutes>`; honours `suspend`, `startingDeadlineSeconds`
//! and `concurrencyPolicy` (Allow, Forbid, Replace); keeps `successfulJobsHistoryLimit`
//! and `failedJobsHistoryLimit` finished Jobs; reports `active`, `lastScheduleTime`
//! and `lastSuccessfulTime`. Follows kubernetes `pkg/controller/cronjob`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::core::ObjectMeta;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Ctx, controlled_by};

const SCHEDULED: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

pub(super) async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    super::run_owning::<CronJob, Job, _, _>(ctx, shutdown, reconcile).await;
}

fn finished(j: &Job) -> Option<&str> {
    j.status.as_ref()?.conditions.as_ref()?.iter().find_map(|c| {
        ((c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True").then_some(c.type_.as_str())
    })
}

/// The schedule's occurrences after `from`, up to `now`: (the latest, how many).
fn missed(
    cron: &croner::Cron,
    tz: chrono_tz::Tz,
    from: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, usize) {
    let mut t = from.with_timezone(&tz);
    let mut last = None;
    let mut n = 0;
    while let Ok(next) = cron.find_next_occurrence(&t, false) {
        if next.with_timezone(&Utc) > now || n > 1000 {
            break;
        }
        last = Some(next.with_timezone(&Utc));
        n += 1;
        t = next;
    }
    (last, n)
}

fn to_chrono(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), 0).unwrap_or_default()
}

fn to_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = cj.namespace().unwrap_or_default();
    let name = cj.name_any();
    let uid = cj.uid().unwrap_or_default();
    let spec = cj.spec.clone().unwrap_or_default();
    let cjs: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let now = Utc::now();

    let tz: chrono_tz::Tz = match spec.time_zone.as_deref() {
        None | Some("") => chrono_tz::UTC,
        Some(z) => match z.parse() {
            Ok(t) => t,
            Err(_) => {
                ctx.event(cj.as_ref(), true, "UnknownTimeZone", format!("invalid timeZone: {z:?}"));
                return Ok(Action::await_change());
            }
        },
    };
    let cron = match croner::Cron::from_str(spec.schedule.trim()) {
        Ok(c) => c,
        Err(e) => {
            ctx.event(
                cj.as_ref(),
                true,
                "UnparseableSchedule",
                format!("unparseable schedule: {:?} : {e}", spec.schedule),
            );
            return Ok(Action::await_change());
        }
    };

    let mut owned: Vec<Job> = jobs
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|j| controlled_by(&j.metadata, &uid))
        .collect();
    owned.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0));
    let mut active: Vec<&Job> =
        owned.iter().filter(|j| finished(j).is_none() && j.metadata.deletion_timestamp.is_none()).collect();

    let status = cj.status.clone().unwrap_or_default();
    let mut last_schedule = status.last_schedule_time.as_ref().map(to_chrono);
    let from = last_schedule.or_else(|| cj.metadata.creation_timestamp.as_ref().map(to_chrono)).unwrap_or(now);
    let (due, count) = missed(&cron, tz, from, now);
    if count > 100 {
        ctx.event(cj.as_ref(), true, "TooManyMissedTimes", format!("too many missed start times: {count}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"));
    }
    let mut replaced = Vec::new();
    if let Some(t) = due
        && !spec.suspend.unwrap_or(false)
    {
        let in_deadline = spec.starting_deadline_seconds.is_none_or(|d| (now - t).num_seconds() <= d);
        let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
        let job_name = format!("{name}-{}", t.timestamp() / 60);
        if !in_deadline {
            ctx.event(
                cj.as_ref(),
                true,
                "MissSchedule",
                format!("Missed scheduled time to start a job: {}", to_time(t)),
            );
            last_schedule = Some(t);
        } else if policy == "Forbid" && !active.is_empty() {
            // Skipped: the next run waits for the active one to end.
        } else {
            if policy == "Replace" {
                for j in &active {
                    let dp =
                        DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
                    let _ = jobs.delete(&j.name_any(), &dp).await;
                    ctx.event(cj.as_ref(), false, "SuccessfulDelete", format!("Deleted job {}", j.name_any()));
                    replaced.push(j.name_any());
                }
            }
            let tmpl = spec.job_template.clone();
            let tmeta = tmpl.metadata.clone().unwrap_or_default();
            let mut annotations = tmeta.annotations.unwrap_or_default();
            annotations.insert(SCHEDULED.into(), to_time(t));
            let job = Job {
                metadata: ObjectMeta {
                    name: Some(job_name.clone()),
                    namespace: Some(ns.clone()),
                    labels: tmeta.labels,
                    annotations: Some(annotations),
                    owner_references: Some(vec![super::controller_ref(cj.as_ref())]),
                    ..Default::default()
                },
                spec: tmpl.spec,
                status: None,
            };
            match jobs.create(&PostParams::default(), &job).await {
                Ok(j) => {
                    ctx.event(cj.as_ref(), false, "SuccessfulCreate", format!("Created job {job_name}"));
                    owned.push(j);
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
            last_schedule = Some(t);
        }
    }
    active = owned
        .iter()
        .filter(|j| {
            finished(j).is_none() && j.metadata.deletion_timestamp.is_none() && !replaced.contains(&j.name_any())
        })
        .collect();

    // History limits: the oldest finished Jobs beyond them go.
    for (kind, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let done: Vec<&Job> =
            owned.iter().filter(|j| finished(j) == Some(kind) && j.metadata.deletion_timestamp.is_none()).collect();
        let extra = done.len().saturating_sub(limit.max(0) as usize);
        for j in &done[..extra] {
            let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
            if jobs.delete(&j.name_any(), &dp).await.is_ok() {
                ctx.event(cj.as_ref(), false, "SuccessfulDelete", format!("Deleted job {}", j.name_any()));
            }
        }
    }

    let last_success = owned
        .iter()
        .filter(|j| finished(j) == Some("Complete"))
        .filter_map(|j| j.status.as_ref()?.completion_time.as_ref().map(to_chrono))
        .max()
        .or_else(|| status.last_successful_time.as_ref().map(to_chrono));
    let refs: Vec<ObjectReference> = active
        .iter()
        .map(|j| {
            let mut r = j.object_ref(&());
            r.field_path = None;
            r
        })
        .collect();
    let want = json!({
        "active": if refs.is_empty() { serde_json::Value::Null } else { json!(refs) },
        "lastScheduleTime": last_schedule.map(to_time),
        "lastSuccessfulTime": last_success.map(to_time),
    });
    let cur = json!({
        "active": status.active.as_ref().filter(|a| !a.is_empty()).map(|a| json!(a)).unwrap_or(serde_json::Value::Null),
        "lastScheduleTime": status.last_schedule_time.as_ref().map(|t| to_time(to_chrono(t))),
        "lastSuccessfulTime": status.last_successful_time.as_ref().map(|t| to_time(to_chrono(t))),
    });
    if want != cur {
        cjs.patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": want}))).await?;
    }

    // Wake at the next scheduled time.
    let next = cron.find_next_occurrence(&now.with_timezone(&tz), false).ok().map(|n| n.with_timezone(&Utc));
    let wait = next.map(|n| (n - now).num_milliseconds().max(0) as u64 + 100).unwrap_or(60_000);
    Ok(Action::requeue(Duration::from_millis(wait)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_read_in_their_time_zone() {
        let cron = croner::Cron::from_str("0 9 * * *").unwrap();
        let from = DateTime::parse_from_rfc3339("2026-01-10T00:00:00Z").unwrap().with_timezone(&Utc);
        let now = DateTime::parse_from_rfc3339("2026-01-12T15:00:00Z").unwrap().with_timezone(&Utc);
        let (last, n) = missed(&cron, chrono_tz::America::New_York, from, now);
        // 09:00 in New York (UTC-5) on the 10th, 11th and 12th: the last at 14:00 UTC.
        assert_eq!(n, 3);
        assert_eq!(to_time(last.unwrap()), "2026-01-12T14:00:00Z");
        let (_, n) = missed(&croner::Cron::from_str("@hourly").unwrap(), chrono_tz::UTC, from, now);
        assert_eq!(n, 63);
    }
}
