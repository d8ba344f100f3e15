use super::*;

fn sandbox(source: &str) -> Sandbox {
    Sandbox::with_script(Limits::default(), &Script::new("test.lua", source)).unwrap()
}

#[test]
fn calls_a_function_with_arguments() {
    let mut sb = sandbox("function add(a, b) return a + b, string.upper('x') end");
    let (sum, s): (i64, String) = sb.call("add", (2, 3)).unwrap();
    assert_eq!((sum, s.as_str()), (5, "X"));
    assert!(sb.has_function("add"));
    assert!(!sb.has_function("nope"));
    assert!(matches!(
        sb.call::<_, ()>("nope", ()),
        Err(ScriptError::MissingFunction { .. })
    ));
}

#[test]
fn infinite_loop_is_stopped_and_the_state_stays_usable() {
    let mut sb = sandbox(
        "function spin()\n  local n = 0\n  while true do n = n + 1 end\nend\n\
         function ok() return 'fine' end",
    );
    let err = sb.call::<_, ()>("spin", ()).unwrap_err();
    assert!(
        matches!(
            err,
            ScriptError::Budget {
                line: Some(3),
                limit: 1_000_000,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("test.lua") && text.contains("budget"),
        "{text}"
    );
    assert_eq!(sb.call::<_, String>("ok", ()).unwrap(), "fine");
    // The budget is per call: the same loop is stopped again.
    assert!(matches!(
        sb.call::<_, ()>("spin", ()),
        Err(ScriptError::Budget { .. })
    ));
}

#[test]
fn pcall_cannot_swallow_the_budget() {
    let mut sb = sandbox(
        "function spin()\n  while true do pcall(function() while true do end end) end\nend\n\
         function nested()\n  while true do\n    xpcall(function() while true do end end, function(e) while true do end end)\n  end\nend",
    );
    assert!(matches!(
        sb.call::<_, ()>("spin", ()),
        Err(ScriptError::Budget { .. })
    ));
    assert!(matches!(
        sb.call::<_, ()>("nested", ()),
        Err(ScriptError::Budget { .. })
    ));
}

#[test]
fn loading_is_budgeted_too() {
    let err = Sandbox::with_script(
        Limits::default(),
        &Script::new("loop.lua", "while true do end"),
    )
    .unwrap_err();
    assert!(matches!(err, ScriptError::Budget { .. }), "{err:?}");
}

#[test]
fn unbounded_allocation_is_stopped() {
    let limits = Limits {
        memory_bytes: 4 << 20,
        instructions: 100_000_000,
    };
    let mut sb = Sandbox::with_script(
        limits,
        &Script::new(
            "mem.lua",
            "t = {}\nfunction grow() local i = 0 while true do i = i + 1 t[i] = string.rep('x', 64) .. i end end\n\
             function big() return string.rep('x', 1 << 30) end",
        ),
    )
    .unwrap();
    let err = sb.call::<_, ()>("grow", ()).unwrap_err();
    assert!(
        matches!(err, ScriptError::Memory { limit, .. } if limit == 4 << 20),
        "{err:?}"
    );
    assert!(sb.memory_exhausted());
    let mut sb = Sandbox::with_script(
        limits,
        &Script::new(
            "mem.lua",
            "function big() return string.rep('x', 1 << 30) end",
        ),
    )
    .unwrap();
    assert!(matches!(
        sb.call::<_, String>("big", ()),
        Err(ScriptError::Memory { .. })
    ));
}

#[test]
fn dangerous_functions_are_absent() {
    let mut sb = sandbox(
        "function probe()\n\
           return type(os), type(io), type(require), type(load), type(loadfile), type(dofile),\n\
                  type(package), type(debug), type(coroutine), type(collectgarbage), type(string.dump)\n\
         end",
    );
    let kinds: mlua::Variadic<String> = sb.call("probe", ()).unwrap();
    assert_eq!(kinds.len(), 11);
    assert!(kinds.iter().all(|k| k == "nil"), "{kinds:?}");
    for (what, source) in [
        ("os.execute", "os.execute('true')"),
        ("io.open", "io.open('/etc/passwd')"),
        ("require", "require('os')"),
        ("load", "load('return 1')"),
        ("string.dump", "load(string.dump(function() end))"),
    ] {
        let err =
            Sandbox::with_script(Limits::default(), &Script::new("evil.lua", source)).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, ScriptError::Runtime { .. }),
            "{what}: {err:?}"
        );
        assert!(text.contains("evil.lua:1:"), "{what}: {text}");
    }
}

#[test]
fn safe_library_is_present() {
    let mut sb = sandbox(
        "function f()\n\
           local t = {3, 1, 2}; table.sort(t)\n\
           local ok, e = pcall(error, 'x')\n\
           return table.concat(t, ','), math.max(1, 5), utf8.char(72, 105), select('#', 1, 2),\n\
                  tostring(ok), tonumber('0x10'), setmetatable({}, {__index = function() return 7 end}).k\n\
         end\n\
         print('loaded', 1, nil)",
    );
    let (joined, max, hi, n, ok, hex, meta): (String, i64, String, i64, String, i64, i64) =
        sb.call("f", ()).unwrap();
    assert_eq!(
        (joined.as_str(), max, hi.as_str(), n, ok.as_str(), hex, meta),
        ("1,2,3", 5, "Hi", 2, "false", 16, 7)
    );
}

#[test]
fn bytecode_chunks_are_refused() {
    // A precompiled chunk starts with ESC "Lua".
    let bytecode = "\x1bLua\x54\x00\x19\r\n\x1a\n";
    let err =
        Sandbox::with_script(Limits::default(), &Script::new("bc.lua", bytecode)).unwrap_err();
    assert!(matches!(err, ScriptError::Syntax { .. }), "{err:?}");
}

#[test]
fn errors_carry_script_name_and_line() {
    let mut sb =
        sandbox("function f()\n  local x = nil\n  return x.y\nend\nfunction g() error('boom') end");
    let text = sb.call::<_, ()>("f", ()).unwrap_err().to_string();
    assert!(text.contains("test.lua:3:"), "{text}");
    assert!(!text.contains("stack traceback"), "{text}");
    let text = sb.call::<_, ()>("g", ()).unwrap_err().to_string();
    assert!(text.contains("test.lua:5: boom"), "{text}");
    let err =
        Sandbox::with_script(Limits::default(), &Script::new("bad.lua", "function (")).unwrap_err();
    assert!(
        matches!(err, ScriptError::Syntax { .. }) && err.to_string().contains("bad.lua:1:"),
        "{err}"
    );
    let err = sb.call::<_, i64>("g2", ()).unwrap_err();
    assert!(matches!(err, ScriptError::MissingFunction { .. }));
    let mut sb = sandbox("function s() return {} end");
    let err = sb.call::<_, String>("s", ()).unwrap_err();
    assert!(
        matches!(&err, ScriptError::BadReturn { function, .. } if function == "s"),
        "{err:?}"
    );
}

#[test]
fn script_thread_serves_calls_and_survives_the_budget() {
    let script = Script::new(
        "thread.lua",
        "count = 0\nfunction bump() count = count + 1 return count end\n\
         function spin() while true do end end",
    );
    let thread = ScriptThread::spawn(script, Limits::default()).unwrap();
    assert_eq!(thread.script_name(), "thread.lua");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(
            thread
                .call(|sb| sb.call::<_, i64>("bump", ()))
                .await
                .unwrap(),
            1
        );
        let err = thread
            .call(|sb| sb.call::<_, ()>("spin", ()))
            .await
            .unwrap_err();
        assert!(matches!(err, ScriptError::Budget { .. }), "{err:?}");
        assert_eq!(
            thread
                .call(|sb| sb.call::<_, i64>("bump", ()))
                .await
                .unwrap(),
            2
        );
    });
    assert_eq!(
        thread
            .call_blocking(|sb| sb.call::<_, i64>("bump", ()))
            .unwrap(),
        3
    );
}

#[test]
fn script_thread_rebuilds_the_state_after_memory_exhaustion() {
    let limits = Limits {
        memory_bytes: 2 << 20,
        instructions: 100_000_000,
    };
    let script = Script::new(
        "hog.lua",
        "hoard = {}\ncalls = 0\n\
         function hog() local i = 0 while true do i = i + 1 hoard[i] = {i} end end\n\
         function calls_so_far() calls = calls + 1 return calls, #hoard end",
    );
    let thread = ScriptThread::spawn(script, limits).unwrap();
    assert_eq!(
        thread
            .call_blocking(|sb| sb.call::<_, (i64, i64)>("calls_so_far", ()))
            .unwrap(),
        (1, 0)
    );
    let err = thread
        .call_blocking(|sb| sb.call::<_, ()>("hog", ()))
        .unwrap_err();
    assert!(matches!(err, ScriptError::Memory { .. }), "{err:?}");
    // Fresh state: the counter starts over and the hoard is gone.
    assert_eq!(
        thread
            .call_blocking(|sb| sb.call::<_, (i64, i64)>("calls_so_far", ()))
            .unwrap(),
        (1, 0)
    );
}

#[test]
fn script_thread_reports_load_errors() {
    let err =
        ScriptThread::spawn(Script::new("broken.lua", "x = = 1"), Limits::default()).unwrap_err();
    assert!(matches!(err, ScriptError::Syntax { .. }), "{err:?}");
    let err = Script::from_file(Path::new("/nonexistent/cyphonic/x.lua")).unwrap_err();
    assert!(matches!(err, ScriptError::Read { .. }));
}

#[test]
fn finalizers_are_refused() {
    let err = Sandbox::with_script(
        Limits::default(),
        &Script::new(
            "gc.lua",
            "setmetatable({}, {__gc = function() while true do end end})",
        ),
    )
    .unwrap_err();
    assert!(err.to_string().contains("gc.lua:1: __gc"), "{err}");
    // Adding `__gc` after the fact does not make an object finalizable (Lua 5.4).
    let mut sb = sandbox(
        "function late()\n  local mt = {}\n  for i = 1, 100 do setmetatable({}, mt) end\n\
         mt.__gc = function() while true do end end\n  local junk = {}\n\
         for i = 1, 100000 do junk[i % 10] = {i} end\n  return 'done'\nend",
    );
    assert_eq!(sb.call::<_, String>("late", ()).unwrap(), "done");
}

#[test]
fn xpcall_calls_its_handler() {
    let mut sb = sandbox(
        "function f()\n  return xpcall(function(a) error({code = a}) end, function(e) return e.code * 2 end, 21)\nend\n\
         function g() return xpcall(function(a, b) return a + b, 'x' end, print, 1, 2) end",
    );
    let (ok, value): (bool, i64) = sb.call("f", ()).unwrap();
    assert_eq!((ok, value), (false, 42));
    let (ok, sum, x): (bool, i64, String) = sb.call("g", ()).unwrap();
    assert_eq!((ok, sum, x.as_str()), (true, 3, "x"));
}
