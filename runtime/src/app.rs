//! The server's own state: built once at start-up by the crate's start-up hook
//! ([`run::main_with_state`](crate::run::main_with_state)), then shared by every tool and
//! prompt call through [`Context`].
//!
//! Rules:
//! 1. The hook runs after the flags and secrets are checked and before the server accepts
//!    a connection (or reads stdin); an error from it stops start-up with its message and
//!    exit code 1 (`a_failing_start_up_hook_stops_start_up`; [`run::start_up`](crate::run::start_up)).
//! 2. The state is typed end to end: a generated crate's glue turns each call's
//!    [`ToolContext`] into a `Context<State>` for the crate's own `State`, so a tool that
//!    reads it gets `&State` without a cast. The one check that is not made by the
//!    compiler (the state the runtime holds is that type) is made by
//!    [`ToolContext::with_state`], which answers a tool error, never a panic
//!    (`a_state_of_another_type_is_a_tool_error`); the generated `main` installs exactly
//!    that type, so the error cannot happen in a generated crate.

use std::any::Any;
use std::sync::Arc;

use crate::context::ToolContext;
use crate::secrets::Secrets;

/// The state a running server holds, type-erased (the generated glue names its type).
pub(crate) type AnyState = Arc<dyn Any + Send + Sync>;

/// What the start-up hook gets: the checked secrets and how the server is served.
#[derive(Debug, Clone)]
pub struct Startup {
    pub(crate) secrets: Secrets,
    pub(crate) stdio: bool,
    pub(crate) name: &'static str,
}

impl Startup {
    /// A start-up context, for tests of a crate's hook (the runtime builds the real one).
    pub fn for_test(name: &'static str) -> Self {
        Self {
            secrets: Secrets::default(),
            stdio: false,
            name,
        }
    }

    /// The value of a secret the spec declares (`None` for a name it does not declare:
    /// every declared secret is present by the time the hook runs).
    pub fn secret(&self, name: &str) -> Option<&str> {
        self.secrets.get(name)
    }

    /// True when the server serves stdin/stdout (`--stdio`), false for HTTP.
    pub fn is_stdio(&self) -> bool {
        self.stdio
    }

    /// The server's name (from the spec).
    pub fn server_name(&self) -> &'static str {
        self.name
    }
}

/// The context of one tool or prompt call together with the server's state `S`: every
/// method of [`ToolContext`] (through `Deref`), plus [`Context::state`].
///
/// Generated crates name it `crate::generated::Ctx` (`Context<crate::state::State>`). A
/// function written against `&ToolContext` accepts a `&Context<S>` too.
pub struct Context<S> {
    ctx: ToolContext,
    state: Arc<S>,
}

impl<S> Context<S> {
    /// The server's state, built by the start-up hook.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The call's context without the state.
    pub fn tool_context(&self) -> &ToolContext {
        &self.ctx
    }
}

impl<S> std::ops::Deref for Context<S> {
    type Target = ToolContext;

    fn deref(&self) -> &ToolContext {
        &self.ctx
    }
}

impl<S> Clone for Context<S> {
    fn clone(&self) -> Self {
        Self {
            ctx: self.ctx.clone(),
            state: Arc::clone(&self.state),
        }
    }
}

impl<S> std::fmt::Debug for Context<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("ctx", &self.ctx)
            .field("state", &std::any::type_name::<S>())
            .finish()
    }
}

impl<S> Context<S> {
    pub(crate) fn new(ctx: ToolContext, state: Arc<S>) -> Self {
        Self { ctx, state }
    }
}
