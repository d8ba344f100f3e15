//! The Lua sandbox the node runs operator scripts in (the DNS filter, later the
//! configuration script).
//!
//! A [`Sandbox`] is one Lua 5.4 state with only the safe part of the base library
//! (`load`, `loadfile`, `dofile`, `require`, `collectgarbage` and `warn` are gone;
//! `print` goes to the log) and the `table`, `string` (without `string.dump`), `math`
//! and `utf8` libraries: no `io`, `os`, `package`, `debug` or `coroutine`. Chunks are
//! loaded as text only, so precompiled bytecode (which can break the VM's memory
//! safety) never runs. Every entry into Lua runs under two limits from [`Limits`]: a
//! memory limit on the whole state and an instruction budget that is reset per call.
//!
//! Scripts never run on async worker threads: a [`ScriptThread`] owns a sandbox on a
//! dedicated std thread and serves calls sent over a channel. A call that exceeds its
//! budget is stopped and reported ([`ScriptError::Budget`]) and the state stays usable
//! for the next call; after the memory limit was hit the thread rebuilds the state from
//! the script's source, because the script's own globals may be half-updated.
//!
//! The budget counts VM instructions. Time spent inside one library call (a long
//! `string.find` with a pathological pattern, say) is not counted; callers that must
//! not wait put their own deadline around [`ScriptThread::call`].

#[cfg(test)]
mod tests;
mod thread;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use mlua::{
    ChunkMode, FromLuaMulti, HookTriggers, IntoLuaMulti, Lua, LuaOptions, StdLib, Value, VmState,
};

pub use thread::ScriptThread;

/// Resource limits of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes the whole Lua state may allocate.
    pub memory_bytes: usize,
    /// VM instructions one call (or the loading of a script) may execute.
    pub instructions: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 16 << 20,
            instructions: 1_000_000,
        }
    }
}

/// A script's name (used in error messages and logs) and its source text.
#[derive(Clone, PartialEq, Eq)]
pub struct Script {
    name: String,
    source: String,
}

impl Script {
    pub fn new(name: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            source: source.into(),
        }
    }

    /// Reads a script; its name is the path as given.
    pub fn from_file(path: &Path) -> Result<Self, ScriptError> {
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(source) => Ok(Self { name, source }),
            Err(e) => Err(ScriptError::Read {
                script: name,
                message: e.to_string(),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script")
            .field("name", &self.name)
            .field("source_len", &self.source.len())
            .finish()
    }
}

/// Why a script could not be loaded or a call into it failed. Every variant names the
/// script; Lua's own messages carry the line (`name:line: message`).
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("script `{script}`: cannot read it: {message}")]
    Read { script: String, message: String },
    /// The source does not compile (or is not text).
    #[error("script `{script}`: {message}")]
    Syntax { script: String, message: String },
    /// The script raised an error or did something invalid.
    #[error("script `{script}`: {message}")]
    Runtime { script: String, message: String },
    /// The call ran more than [`Limits::instructions`] VM instructions and was stopped.
    #[error("script `{script}`: stopped after exceeding its budget of {limit} instructions{}", at_line(*.line))]
    Budget {
        script: String,
        limit: u64,
        line: Option<usize>,
    },
    /// The state hit [`Limits::memory_bytes`].
    #[error("script `{script}`: memory limit of {limit} bytes exceeded")]
    Memory { script: String, limit: usize },
    #[error("script `{script}`: it defines no function `{function}`")]
    MissingFunction { script: String, function: String },
    /// The function returned something the caller cannot use.
    #[error("script `{script}`: `{function}` returned {message}")]
    BadReturn {
        script: String,
        function: String,
        message: String,
    },
    /// The script's `self_check()` returned this complaint.
    #[error("script `{script}`: self check failed: {message}")]
    SelfCheck { script: String, message: String },
    /// The script thread's queue is full.
    #[error("script `{script}`: too many calls waiting")]
    Busy { script: String },
    /// The script thread has ended.
    #[error("script `{script}`: the script thread has stopped")]
    Stopped { script: String },
    /// The Lua state could not be set up.
    #[error("lua sandbox setup: {0}")]
    Setup(String),
}

impl ScriptError {
    /// The script the error is about (empty for [`ScriptError::Setup`]).
    pub fn script(&self) -> &str {
        match self {
            Self::Read { script, .. }
            | Self::Syntax { script, .. }
            | Self::Runtime { script, .. }
            | Self::Budget { script, .. }
            | Self::Memory { script, .. }
            | Self::MissingFunction { script, .. }
            | Self::BadReturn { script, .. }
            | Self::SelfCheck { script, .. }
            | Self::Busy { script }
            | Self::Stopped { script } => script,
            Self::Setup(_) => "",
        }
    }
}

fn at_line(line: Option<usize>) -> String {
    match line {
        Some(line) => format!(" (at line {line})"),
        None => String::new(),
    }
}

/// One sandboxed Lua state; see the module docs for what a script can reach.
pub struct Sandbox {
    lua: Lua,
    limits: Limits,
    budget: Arc<Budget>,
    /// Name of the last script loaded, for error messages.
    script: String,
    memory_exhausted: bool,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("script", &self.script)
            .field("limits", &self.limits)
            .field("used_memory", &self.lua.used_memory())
            .finish()
    }
}

/// Base-library functions a script must not have: they load code (text or bytecode)
/// from strings or files, steer the collector, or write to stderr.
const REMOVED_GLOBALS: &[&str] = &[
    "load",
    "loadfile",
    "dofile",
    "require",
    "collectgarbage",
    "warn",
    "print",
];

/// Closes the two ways Lua code can run with debug hooks off, where the budget
/// cannot stop it:
/// - `__gc` finalizers run with hooks disabled: `setmetatable` refuses metatables
///   with a `__gc` field (an object is only finalized if its metatable had `__gc` when
///   it was set, so adding the field later does nothing).
/// - a message handler that runs for an error raised by the budget hook itself runs
///   with hooks still disabled: `xpcall` becomes `pcall` followed by a call of the
///   handler after the stack has unwound. Without the debug library a handler could
///   not have produced a traceback anyway.
const PRELUDE: &str = r#"
local pcall, error, rawget, type, raw_setmetatable = pcall, error, rawget, type, setmetatable
local pack, unpack = table.pack, table.unpack
function setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not available in the sandbox", 2)
  end
  return raw_setmetatable(t, mt)
end
function xpcall(f, handler, ...)
  local result = pack(pcall(f, ...))
  if result[1] then
    return unpack(result, 1, result.n)
  end
  return false, handler(result[2])
end
"#;

/// How often the budget hook runs; smaller budgets are checked at their own size.
const HOOK_GRANULARITY: u32 = 1000;

impl Sandbox {
    /// A fresh state with the safe libraries and the limits armed.
    pub fn new(limits: Limits) -> Result<Self, ScriptError> {
        let setup = |e: mlua::Error| ScriptError::Setup(e.to_string());
        let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8;
        let lua = Lua::new_with(libs, LuaOptions::new()).map_err(setup)?;
        let globals = lua.globals();
        for name in REMOVED_GLOBALS {
            globals.raw_set(*name, Value::Nil).map_err(setup)?;
        }
        let string: mlua::Table = globals.raw_get("string").map_err(setup)?;
        string.raw_set("dump", Value::Nil).map_err(setup)?;
        globals
            .raw_set("print", lua.create_function(log_print).map_err(setup)?)
            .map_err(setup)?;
        lua.set_memory_limit(limits.memory_bytes).map_err(setup)?;
        let budget = Arc::new(Budget::new(limits.instructions));
        let mut sandbox = Self {
            lua,
            limits,
            budget,
            script: String::from("sandbox"),
            memory_exhausted: false,
        };
        sandbox.run(|lua| {
            lua.load(PRELUDE)
                .set_name("=sandbox")
                .set_mode(ChunkMode::Text)
                .exec()
        })?;
        Ok(sandbox)
    }

    /// A fresh state with `script` loaded.
    pub fn with_script(limits: Limits, script: &Script) -> Result<Self, ScriptError> {
        let mut sandbox = Self::new(limits)?;
        sandbox.load(script)?;
        Ok(sandbox)
    }

    /// Runs `script`'s main chunk (text only) under the budget; its global functions
    /// become callable with [`Sandbox::call`].
    pub fn load(&mut self, script: &Script) -> Result<(), ScriptError> {
        self.script = script.name.clone();
        let chunk_name = format!("@{}", script.name);
        self.run(|lua| {
            lua.load(script.source.as_str())
                .set_name(chunk_name)
                .set_mode(ChunkMode::Text)
                .exec()
        })
    }

    /// Calls the global function `function` under the budget.
    pub fn call<A, R>(&mut self, function: &str, args: A) -> Result<R, ScriptError>
    where
        A: IntoLuaMulti,
        R: FromLuaMulti,
    {
        let Some(f) = self.function(function) else {
            return Err(ScriptError::MissingFunction {
                script: self.script.clone(),
                function: function.to_owned(),
            });
        };
        match self.run(|_| f.call::<R>(args)) {
            Err(ScriptError::BadReturn {
                script, message, ..
            }) => Err(ScriptError::BadReturn {
                script,
                function: function.to_owned(),
                message,
            }),
            other => other,
        }
    }

    /// Runs the script's optional `self_check()`: absent or `true` is fine, a string
    /// is the script's complaint ([`ScriptError::SelfCheck`]).
    pub fn self_check(&mut self) -> Result<(), ScriptError> {
        if !self.has_function("self_check") {
            return Ok(());
        }
        match self.call::<_, Value>("self_check", ())? {
            Value::Boolean(true) => Ok(()),
            Value::String(message) => Err(ScriptError::SelfCheck {
                script: self.script.clone(),
                message: message.to_string_lossy(),
            }),
            other => Err(ScriptError::BadReturn {
                script: self.script.clone(),
                function: String::from("self_check"),
                message: format!("a {} (expected true or a message)", other.type_name()),
            }),
        }
    }

    /// True when the loaded script defines a global function `function`.
    pub fn has_function(&self, function: &str) -> bool {
        self.function(function).is_some()
    }

    /// Runs `f` (which may call into Lua any way it likes) under a fresh instruction
    /// budget, and turns its error into a [`ScriptError`] naming the script.
    pub fn run<R>(&mut self, f: impl FnOnce(&Lua) -> mlua::Result<R>) -> Result<R, ScriptError> {
        self.budget.reset();
        // Restores the coarse hook if the previous call ended in the per-instruction one.
        install_budget_hook(&self.lua, &self.budget, self.budget.granularity())
            .map_err(|e| ScriptError::Setup(e.to_string()))?;
        let result = f(&self.lua);
        if self.budget.exceeded.load(Ordering::Relaxed) {
            // Whatever the error looks like after the script's own pcall/xpcall
            // handlers saw it, the cause is the budget.
            let line = self.budget.line.load(Ordering::Relaxed);
            return Err(ScriptError::Budget {
                script: self.script.clone(),
                limit: self.limits.instructions,
                line: (line != 0).then_some(line),
            });
        }
        result.map_err(|e| self.classify(&e))
    }

    /// The state itself, e.g. to build tables to pass as arguments.
    pub fn lua(&self) -> &Lua {
        &self.lua
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Name of the script loaded last.
    pub fn script_name(&self) -> &str {
        &self.script
    }

    /// True once a call ran out of memory: the state should be rebuilt from source.
    pub fn memory_exhausted(&self) -> bool {
        self.memory_exhausted
    }

    fn function(&self, name: &str) -> Option<mlua::Function> {
        match self.lua.globals().raw_get::<Value>(name) {
            Ok(Value::Function(f)) => Some(f),
            _ => None,
        }
    }

    fn classify(&mut self, error: &mlua::Error) -> ScriptError {
        let script = self.script.clone();
        let root = root_cause(error);
        match root {
            mlua::Error::MemoryError(_) => {
                self.memory_exhausted = true;
                ScriptError::Memory {
                    script,
                    limit: self.limits.memory_bytes,
                }
            }
            mlua::Error::SyntaxError { message, .. } => ScriptError::Syntax {
                script,
                message: message.clone(),
            },
            mlua::Error::FromLuaConversionError { .. } => ScriptError::BadReturn {
                script,
                function: String::from("the call"),
                message: root.to_string(),
            },
            mlua::Error::RuntimeError(message) => ScriptError::Runtime {
                script,
                message: without_traceback(message).to_owned(),
            },
            other => ScriptError::Runtime {
                script,
                message: without_traceback(&other.to_string()).to_owned(),
            },
        }
    }
}

/// Strips mlua's wrappers (callback, context) down to the error that started it.
fn root_cause(error: &mlua::Error) -> &mlua::Error {
    match error {
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            root_cause(cause)
        }
        other => other,
    }
}

/// Log lines want the message, not the Lua stack dump mlua appends.
fn without_traceback(message: &str) -> &str {
    match message.find("\nstack traceback:") {
        Some(end) => &message[..end],
        None => message,
    }
    .trim_end()
}

/// Longest `print` line that reaches the log.
const MAX_PRINT_LEN: usize = 1024;

/// `print` for scripts: one log line at info level, tagged with the caller's position.
fn log_print(lua: &Lua, args: mlua::Variadic<Value>) -> mlua::Result<()> {
    let mut line = String::new();
    for (i, value) in args.iter().enumerate() {
        if i > 0 {
            line.push('\t');
        }
        line.push_str(&value.to_string()?);
        if line.len() > MAX_PRINT_LEN {
            let mut end = MAX_PRINT_LEN;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            line.push('…');
            break;
        }
    }
    let origin = lua
        .inspect_stack(1, |debug| {
            let source = debug.source().short_src.map(|s| s.into_owned());
            (source, debug.current_line())
        })
        .unwrap_or((None, None));
    tracing::info!(
        target: "cyphonic::script",
        "{}:{}: {line}",
        origin.0.as_deref().unwrap_or("?"),
        origin.1.unwrap_or(0)
    );
    Ok(())
}

/// The instruction budget of the current call, shared with the hook.
#[derive(Debug)]
struct Budget {
    limit: u64,
    used: AtomicU64,
    exceeded: AtomicBool,
    /// Line the script was at when stopped; 0 when unknown.
    line: AtomicUsize,
}

impl Budget {
    fn new(limit: u64) -> Self {
        Self {
            limit,
            used: AtomicU64::new(0),
            exceeded: AtomicBool::new(false),
            line: AtomicUsize::new(0),
        }
    }

    fn granularity(&self) -> u32 {
        u32::try_from(self.limit.clamp(1, u64::from(HOOK_GRANULARITY))).unwrap_or(HOOK_GRANULARITY)
    }

    fn reset(&self) {
        self.used.store(0, Ordering::Relaxed);
        self.exceeded.store(false, Ordering::Relaxed);
        self.line.store(0, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("instruction budget exceeded")]
struct BudgetExceeded;

/// Counts instructions in steps of `every`. Once over the budget, the hook raises an
/// error and re-arms itself to fire at every instruction: a script that catches the
/// error with `pcall` then fails at its very next instruction, so the error reaches
/// the host however deep the handlers are nested.
fn install_budget_hook(lua: &Lua, budget: &Arc<Budget>, every: u32) -> mlua::Result<()> {
    let state = Arc::clone(budget);
    lua.set_hook(
        HookTriggers::new().every_nth_instruction(every),
        move |lua, debug| {
            let used = state.used.fetch_add(u64::from(every), Ordering::Relaxed) + u64::from(every);
            if used <= state.limit {
                return Ok(VmState::Continue);
            }
            if !state.exceeded.swap(true, Ordering::Relaxed) {
                state
                    .line
                    .store(debug.current_line().unwrap_or(0), Ordering::Relaxed);
                install_budget_hook(lua, &state, 1)?;
            }
            Err(mlua::Error::external(BudgetExceeded))
        },
    )
}
