//! MCP tasks (the `io.modelcontextprotocol/tasks` extension, SEP-2663) for every tool the
//! spec marks `task: optional|required`. The runtime does all of it; a tool body never
//! knows whether it runs as a task.
//!
//! Rules:
//! 1. A task belongs to the caller that created it: the token's `iss` and `sub` (one
//!    anonymous caller without authentication). For any other caller its id is unknown:
//!    `tasks/get`, `tasks/update` and `tasks/cancel` answer the same `-32602` as for an id
//!    that never existed, so nothing tells the two apart. A token without `sub` names no
//!    caller and cannot create tasks.
//! 2. Ids are 256 random bits (hex), never derived from anything a client sent.
//! 3. Bounded: at most [`MAX_LIVE`] running (unfinished: `working` or `input_required`)
//!    tasks overall and [`MAX_LIVE_PER_CALLER`] per caller; a task past either is refused
//!    with an error ("too many running tasks") for a `required` tool, while an `optional`
//!    one then answers directly (SEP-2663: the server decides per request whether to make
//!    a task); nothing running is ever evicted for it.
//!    At most [`MAX_KEPT`] tasks in any state overall and [`MAX_KEPT_PER_CALLER`] per
//!    caller; these never refuse a task: a caller at its kept limit loses its own oldest
//!    finished task (the one that ended first), and at the server-wide limit the caller
//!    holding the most finished tasks loses its oldest one. A forgotten task's result is
//!    gone: `tasks/get` then answers the unknown-task `-32602`. Finished tasks alone never
//!    lock a caller out, and the store never grows past [`MAX_KEPT`].
//! 4. A task runs at most [`TTL`] (advertised as `ttlMs`); then its work is stopped and it
//!    fails. A finished task stays readable until `createdAt + ttlMs`, and at least
//!    [`KEEP_AFTER_END`] after it ended, then it is forgotten; sooner if it has to make
//!    room under rule 3.
//! 5. `tasks/cancel` stops the work: the tool's future is dropped (tokio abort), so an
//!    upstream request in flight is dropped with it, and questions it was waiting on go
//!    away. Cancelling a finished task is acknowledged and changes nothing.
//! 6. A question the tool asks while it runs as a task (`ToolContext::ask`) is listed
//!    under `inputRequests` of `tasks/get` (status `input_required`) until `tasks/update`
//!    answers its key; answers to other keys, and answers that are not JSON objects, are
//!    ignored.
//! 7. Sessions (legacy protocol versions) also get a `notifications/tasks` message at
//!    each status change, best effort; 2026-07-28 clients poll `tasks/get`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bmm_middleware::AuthContext;
use rmcp::model::{
    CallToolResponse, DetailedTask, InputRequest, InputRequests, InputResponses, JsonObject,
    Notification, ServerNotification, Task, TaskPayload, TaskStatus, TaskStatusNotificationParams,
};
use rmcp::{ErrorData, Peer, RoleServer};
use serde_json::Value;
use tokio::sync::oneshot;

/// Unfinished tasks, all callers together.
pub const MAX_LIVE: usize = 256;
/// Unfinished tasks of one caller.
pub const MAX_LIVE_PER_CALLER: usize = 16;
/// Tasks in any state (finished ones are kept for their result), all callers together;
/// past it the oldest finished task of the caller holding the most is forgotten.
pub const MAX_KEPT: usize = 2048;
/// Tasks in any state of one caller; past it the caller's oldest finished task is
/// forgotten.
pub const MAX_KEPT_PER_CALLER: usize = 128;
/// How long a task may run, and how long it stays readable after it was created.
pub const TTL: Duration = Duration::from_secs(15 * 60);
/// A finished task stays readable at least this long after it ended.
pub const KEEP_AFTER_END: Duration = Duration::from_secs(60);
/// The polling interval suggested to clients.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How often expired tasks are looked for, at most.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Who a task belongs to (rule 1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Owner(String);

impl Owner {
    /// The caller of a request; `None` for a token without `sub`.
    pub(crate) fn of(auth: Option<&AuthContext>) -> Option<Self> {
        match auth {
            None => Some(Self(String::new())),
            Some(a) => {
                let sub = a.subject()?;
                // Unambiguous: a JSON array of the two strings.
                Some(Self(Value::from(vec![a.issuer(), sub]).to_string()))
            }
        }
    }
}

/// The error for an id this caller does not own, or that does not exist (rule 1).
fn unknown_task() -> ErrorData {
    ErrorData::invalid_params("unknown task", None)
}

fn refused(what: &str, limit: usize) -> ErrorData {
    ErrorData::invalid_request(
        format!(
            "too many running tasks {what} (limit {limit}); wait for one to finish or cancel one"
        ),
        None,
    )
}

struct Entry {
    owner: Owner,
    task: Task,
    terminal: Option<TaskPayload>,
    created: Instant,
    ended: Option<Instant>,
    /// Questions waiting for `tasks/update`, by key.
    pending: BTreeMap<String, (InputRequest, oneshot::Sender<Value>)>,
    /// Stops the tool's future (rule 5).
    abort: Option<tokio::task::AbortHandle>,
    /// Where status notifications go (legacy sessions only, rule 7).
    peer: Option<Peer<RoleServer>>,
}

impl Entry {
    fn status(&self) -> TaskStatus {
        match &self.terminal {
            Some(p) => p.status(),
            None if !self.pending.is_empty() => TaskStatus::InputRequired,
            None => TaskStatus::Working,
        }
    }

    fn detailed(&self) -> DetailedTask {
        let payload = match &self.terminal {
            Some(p) => p.clone(),
            None if !self.pending.is_empty() => TaskPayload::InputRequired {
                input_requests: self
                    .pending
                    .iter()
                    .map(|(k, (q, _))| (k.clone(), q.clone()))
                    .collect::<InputRequests>(),
            },
            None => TaskPayload::Working,
        };
        DetailedTask::new(self.task.clone(), payload)
    }

    /// Records a status change; returns the notification to send, if any.
    fn touched(&mut self) -> Option<(Peer<RoleServer>, DetailedTask)> {
        self.task.last_updated_at = now();
        self.task.status = self.status();
        self.peer.clone().map(|p| (p, self.detailed()))
    }

    /// Ends the task with `payload` unless it already ended; stops its work.
    fn end(&mut self, payload: TaskPayload) -> Option<(Peer<RoleServer>, DetailedTask)> {
        if self.terminal.is_some() {
            return None;
        }
        if let Some(abort) = self.abort.take() {
            abort.abort();
        }
        self.pending.clear();
        self.terminal = Some(payload);
        self.ended = Some(Instant::now());
        self.touched()
    }
}

#[derive(Default)]
struct Inner {
    tasks: HashMap<String, Entry>,
    last_sweep: Option<Instant>,
}

/// Every task of one server.
#[derive(Clone, Default)]
pub(crate) struct TaskStore {
    inner: Arc<Mutex<Inner>>,
}

/// What a running task's tool uses to ask the client (rule 6).
#[derive(Clone)]
pub(crate) struct TaskInput {
    store: TaskStore,
    id: String,
}

impl std::fmt::Debug for TaskInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TaskInput(..)")
    }
}

impl TaskInput {
    /// Lists `request` under `key` until `tasks/update` answers it; `None` when the task
    /// is gone or ended (the caller then stops).
    pub(crate) fn ask(
        &self,
        key: String,
        request: InputRequest,
    ) -> Option<oneshot::Receiver<Value>> {
        let (tx, rx) = oneshot::channel();
        let note = {
            let mut inner = self.store.lock();
            let entry = inner.tasks.get_mut(&self.id)?;
            if entry.terminal.is_some() {
                return None;
            }
            entry.pending.insert(key, (request, tx));
            entry.touched()
        };
        notify(note);
        Some(rx)
    }
}

/// RFC 3339 UTC time, as rmcp writes it.
fn now() -> String {
    rmcp::task_manager::current_timestamp()
}

fn random_id() -> String {
    let bytes: [u8; 32] = rand::random();
    let mut id = String::with_capacity(64);
    for b in bytes {
        let _ = write!(id, "{b:02x}");
    }
    id
}

fn to_object<T: serde::Serialize>(value: &T) -> JsonObject {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => map,
        _ => JsonObject::new(),
    }
}

/// Sends a status notification outside the lock, best effort (rule 7).
fn notify(note: Option<(Peer<RoleServer>, DetailedTask)>) {
    let Some((peer, task)) = note else { return };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let params = TaskStatusNotificationParams::from(task);
        let message = ServerNotification::TaskStatusNotification(Notification::new(params));
        if let Err(e) = peer.send_notification(message).await {
            tracing::debug!(error = %e, "task status notification not delivered");
        }
    });
}

impl TaskStore {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops tasks that ran past [`TTL`] and forgets finished ones past their keep time
    /// (rule 4), at most once per [`SWEEP_EVERY`] unless `force`.
    fn sweep(inner: &mut Inner, force: bool) -> Vec<(Peer<RoleServer>, DetailedTask)> {
        let now = Instant::now();
        if !force
            && inner
                .last_sweep
                .is_some_and(|t| now.duration_since(t) < SWEEP_EVERY)
        {
            return Vec::new();
        }
        inner.last_sweep = Some(now);
        let mut notes = Vec::new();
        for entry in inner.tasks.values_mut() {
            if entry.terminal.is_none() && now.duration_since(entry.created) >= TTL {
                let error = ErrorData::internal_error("the task ran past its ttlMs", None);
                notes.extend(entry.end(TaskPayload::Failed {
                    error: to_object(&error),
                }));
            }
        }
        inner.tasks.retain(|_, e| match e.ended {
            None => true,
            Some(ended) => {
                now.duration_since(e.created) < TTL || now.duration_since(ended) < KEEP_AFTER_END
            }
        });
        notes
    }

    /// Creates a `working` task for `owner`, or refuses it at a running-task limit, the
    /// only refusal (rule 3; an `optional` tool then answers directly instead). The
    /// task's work starts with [`TaskStore::start`]; until then nobody knows its id.
    pub(crate) fn create(
        &self,
        owner: Owner,
        peer: Option<Peer<RoleServer>>,
    ) -> Result<TaskInput, ErrorData> {
        let mut inner = self.lock();
        let notes = Self::sweep(&mut inner, true);
        let (mut live, mut mine, mut mine_live) = (0, 0, 0);
        for e in inner.tasks.values() {
            let unfinished = e.terminal.is_none();
            live += usize::from(unfinished);
            if e.owner == owner {
                mine += 1;
                mine_live += usize::from(unfinished);
            }
        }
        let limit = if mine_live >= MAX_LIVE_PER_CALLER {
            Some(refused("for this caller", MAX_LIVE_PER_CALLER))
        } else if live >= MAX_LIVE {
            Some(refused("on this server", MAX_LIVE))
        } else {
            None
        };
        if let Some(error) = limit {
            drop(inner);
            notes.into_iter().for_each(|n| notify(Some(n)));
            return Err(error);
        }
        // Kept limits make room instead of refusing (rule 3). Below the live limits the
        // caller holds at least MAX_KEPT_PER_CALLER - MAX_LIVE_PER_CALLER finished tasks
        // when at its kept limit, and the server at least MAX_KEPT - MAX_LIVE, so there is
        // always a finished task to forget.
        if mine >= MAX_KEPT_PER_CALLER {
            Self::forget_oldest_finished(&mut inner, &owner);
        }
        if inner.tasks.len() >= MAX_KEPT
            && let Some(holder) = Self::biggest_finished_holder(&inner)
        {
            Self::forget_oldest_finished(&mut inner, &holder);
        }
        let id = random_id();
        let stamp = now();
        let mut task = Task::new(id.clone(), TaskStatus::Working, stamp.clone(), stamp);
        task.ttl_ms = Some(u64::try_from(TTL.as_millis()).unwrap_or(u64::MAX));
        task.poll_interval_ms = Some(u64::try_from(POLL_INTERVAL.as_millis()).unwrap_or(1000));
        inner.tasks.insert(
            id.clone(),
            Entry {
                owner,
                task,
                terminal: None,
                created: Instant::now(),
                ended: None,
                pending: BTreeMap::new(),
                abort: None,
                peer,
            },
        );
        drop(inner);
        notes.into_iter().for_each(|n| notify(Some(n)));
        Ok(TaskInput {
            store: self.clone(),
            id,
        })
    }

    /// Forgets `owner`'s finished task that ended first (rule 3); never a running one.
    fn forget_oldest_finished(inner: &mut Inner, owner: &Owner) {
        let oldest = inner
            .tasks
            .iter()
            .filter(|(_, e)| e.owner == *owner)
            .filter_map(|(id, e)| e.ended.map(|ended| ((ended, e.created), id)))
            .min_by_key(|(when, _)| *when)
            .map(|(_, id)| id.clone());
        if let Some(id) = oldest {
            inner.tasks.remove(&id);
        }
    }

    /// The caller holding the most finished tasks: at the server-wide kept limit it is
    /// the one that makes room (rule 3). Chosen over "globally oldest finished" so that
    /// one caller filling the store with quick tasks mostly recycles its own results
    /// instead of erasing other callers' results they have not read yet; a caller holding
    /// few finished tasks loses one only once nobody holds more.
    fn biggest_finished_holder(inner: &Inner) -> Option<Owner> {
        let mut finished: HashMap<&Owner, usize> = HashMap::new();
        for e in inner.tasks.values().filter(|e| e.terminal.is_some()) {
            *finished.entry(&e.owner).or_default() += 1;
        }
        finished
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(owner, _)| owner.clone())
    }

    /// Runs `work` as the task's body; its outcome (already redacted) ends the task.
    pub(crate) fn start(
        &self,
        input: &TaskInput,
        work: crate::def::BoxFuture<Result<CallToolResponse, ErrorData>>,
    ) {
        let body = tokio::spawn(work);
        let abort = body.abort_handle();
        {
            let mut inner = self.lock();
            match inner.tasks.get_mut(&input.id) {
                Some(entry) if entry.terminal.is_none() => entry.abort = Some(abort),
                // Cancelled or gone already: the work must not run on.
                _ => abort.abort(),
            }
        }
        let store = self.clone();
        let id = input.id.clone();
        tokio::spawn(async move {
            let outcome = match body.await {
                Ok(outcome) => outcome,
                Err(e) if e.is_panic() => Err(ErrorData::internal_error("the tool panicked", None)),
                // Aborted: whoever aborted it already recorded why.
                Err(_) => return,
            };
            store.finish_id(&id, outcome);
        });
    }

    /// Ends the task with the tool's outcome: a result (an error result too) completes
    /// it, a JSON-RPC error fails it.
    pub(crate) fn finish(&self, input: &TaskInput, outcome: Result<CallToolResponse, ErrorData>) {
        self.finish_id(&input.id, outcome);
    }

    fn finish_id(&self, id: &str, outcome: Result<CallToolResponse, ErrorData>) {
        let payload = match outcome {
            Ok(CallToolResponse::Complete(result)) => TaskPayload::Completed {
                result: to_object(&result),
            },
            Ok(_) => TaskPayload::Failed {
                error: to_object(&ErrorData::internal_error(
                    "the tool asked for input up front after its task had started",
                    None,
                )),
            },
            Err(error) => TaskPayload::Failed {
                error: to_object(&error),
            },
        };
        let note = {
            let mut inner = self.lock();
            inner.tasks.get_mut(id).and_then(|e| {
                e.abort = None;
                e.end(payload)
            })
        };
        notify(note);
    }

    /// Forgets a task whose id was never handed out (the call answered directly).
    pub(crate) fn forget(&self, input: &TaskInput) {
        if let Some(mut entry) = self.lock().tasks.remove(&input.id)
            && let Some(abort) = entry.abort.take()
        {
            abort.abort();
        }
    }

    /// The task as `tools/call` returns it.
    pub(crate) fn snapshot(&self, input: &TaskInput) -> Option<Task> {
        self.lock().tasks.get(&input.id).map(|e| {
            let mut task = e.task.clone();
            task.status = e.status();
            task
        })
    }

    fn with_owned<T>(
        &self,
        owner: &Owner,
        id: &str,
        f: impl FnOnce(&mut Entry) -> (T, Option<(Peer<RoleServer>, DetailedTask)>),
    ) -> Result<T, ErrorData> {
        let (out, notes) = {
            let mut inner = self.lock();
            let mut notes = Self::sweep(&mut inner, false);
            let entry = inner
                .tasks
                .get_mut(id)
                .filter(|e| e.owner == *owner)
                .ok_or_else(unknown_task)?;
            let (out, note) = f(entry);
            notes.extend(note);
            (out, notes)
        };
        notes.into_iter().for_each(|n| notify(Some(n)));
        Ok(out)
    }

    /// `tasks/get`.
    pub(crate) fn get(&self, owner: &Owner, id: &str) -> Result<DetailedTask, ErrorData> {
        self.with_owned(owner, id, |e| (e.detailed(), None))
    }

    /// `tasks/update`: answers to the keys still waiting (rule 6).
    pub(crate) fn update(
        &self,
        owner: &Owner,
        id: &str,
        answers: InputResponses,
    ) -> Result<(), ErrorData> {
        self.with_owned(owner, id, |e| {
            let mut answered = false;
            for (key, value) in answers {
                if !value.is_object() {
                    continue;
                }
                if let Some((_, tx)) = e.pending.remove(&key) {
                    let _ = tx.send(value);
                    answered = true;
                }
            }
            ((), if answered { e.touched() } else { None })
        })
    }

    /// `tasks/cancel` (rule 5).
    pub(crate) fn cancel(&self, owner: &Owner, id: &str) -> Result<(), ErrorData> {
        self.with_owned(owner, id, |e| ((), e.end(TaskPayload::Cancelled)))
    }

    /// Unfinished tasks (for tests and shutdown).
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.lock()
            .tasks
            .values()
            .filter(|e| e.terminal.is_none())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_256_random_bits() {
        let (a, b) = (random_id(), random_id());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn a_caller_past_its_live_limit_is_refused_and_nothing_grows() {
        let store = TaskStore::default();
        let owner = Owner("a".into());
        for _ in 0..MAX_LIVE_PER_CALLER {
            store.create(owner.clone(), None).unwrap();
        }
        let error = store.create(owner, None).err().unwrap();
        assert!(error.message.contains("too many"), "{}", error.message);
        assert_eq!(store.live(), MAX_LIVE_PER_CALLER);
        // Another caller is not affected.
        store.create(Owner("b".into()), None).unwrap();
    }

    #[tokio::test]
    async fn at_the_server_kept_limit_the_biggest_holder_makes_room_never_a_running_task() {
        let store = TaskStore::default();
        let failed = || Err(ErrorData::internal_error("x", None));
        // `a`: all its running tasks plus finished ones, fewer finished than the others.
        let a = Owner("a".into());
        for _ in MAX_LIVE_PER_CALLER..MAX_KEPT_PER_CALLER {
            let t = store.create(a.clone(), None).unwrap();
            store.finish(&t, failed());
        }
        let mut a_running = Vec::new();
        for _ in 0..MAX_LIVE_PER_CALLER {
            a_running.push(store.create(a.clone(), None).unwrap());
        }
        // Others fill the server with finished tasks.
        let mut firsts = Vec::new();
        let mut n = 0;
        while store.lock().tasks.len() < MAX_KEPT {
            let owner = Owner(format!("o{}", n / MAX_KEPT_PER_CALLER));
            let t = store.create(owner.clone(), None).unwrap();
            store.finish(&t, failed());
            if n % MAX_KEPT_PER_CALLER == 0 {
                firsts.push((owner, t.id.clone()));
            }
            n += 1;
        }
        let newcomer = store.create(Owner("new".into()), None).unwrap();
        assert_eq!(store.lock().tasks.len(), MAX_KEPT, "the store grew");
        assert!(store.snapshot(&newcomer).is_some());
        for t in &a_running {
            assert_eq!(store.get(&a, &t.id).unwrap().status(), TaskStatus::Working);
        }
        let kept_by_a = store.lock().tasks.values().filter(|e| e.owner == a).count();
        assert_eq!(
            kept_by_a, MAX_KEPT_PER_CALLER,
            "a holds fewer finished tasks"
        );
        let gone: Vec<_> = firsts
            .iter()
            .filter(|(owner, id)| store.get(owner, id).is_err())
            .collect();
        assert_eq!(gone.len(), 1, "one biggest holder lost its oldest task");
    }
}
