-- config.lua: configuration logic for cyphonicd. The daemon runs it after parsing
-- node.yaml, at start and at every reload, and validates what it returns before using
-- it. This template changes nothing: uncomment and adapt the examples. See
-- docs/scripting.md for the sandbox and the full API.
--
--   configure(config, host) -> config | nil
--
-- `config` holds the settings a script may change (everything else comes from
-- node.yaml only), with their values from the file:
--   config.log                        "info"      tracing filter directive
--   config.tunnel.keepalive_secs      20          1..25
--   config.tunnel.suites              {}          suite names, most preferred first
--                                                 ("aes-256-gcm", "chacha20-poly1305",
--                                                 "aes-256-ctr-hmac-sha256");
--                                                 {} = every loaded suite
--   config.resolver.upstreams         {}          { "192.0.2.53:53", "[2001:db8::53]:53" }
--   config.resolver.block_response    "nxdomain"  or "refused"
--   config.resolver.ttl_secs          5           0..86400
--   config.mobility.poll_interval_ms  2000        100..60000
--
-- `host` describes the machine:
--   host.hostname     "edge-7"
--   host.os           "linux"
--   host.cpu_has_aes  true when the CPU has AES instructions
--   host.behind_nat   true / false, or nil while unknown
--   host.interfaces   names of the interfaces with an address: { "eth0", "lo", "wwan0" }
--
-- Return `config` (changed or not), or a table with only the keys to change, or nil
-- for "no change". Any other key, a value of the wrong type or out of range is an
-- error, and the daemon keeps its running configuration.

-- True when one of the host's interfaces starts with `prefix` ("wwan", "rmnet").
local function has_interface(host, prefix)
  for _, name in ipairs(host.interfaces) do
    if name:sub(1, #prefix) == prefix then
      return true
    end
  end
  return false
end

function configure(config, host)
  -- Cellular links and carrier NATs drop idle UDP mappings early: send keepalives
  -- more often there.
  --
  -- if has_interface(host, "wwan") or has_interface(host, "rmnet") then
  --   config.tunnel.keepalive_secs = 10
  -- elseif host.behind_nat then
  --   config.tunnel.keepalive_secs = 15
  -- end

  -- Without AES instructions ChaCha20-Poly1305 is several times faster than AES-GCM:
  -- offer it first (each suite still needs its crypto plugin loaded).
  --
  -- if not host.cpu_has_aes then
  --   config.tunnel.suites = { "chacha20-poly1305", "aes-256-gcm" }
  -- end

  -- More detail in the log on one machine while debugging.
  --
  -- if host.hostname == "edge-7" then
  --   config.log = "info,cyphonic_host=debug"
  -- end

  -- A laptop that roams: notice address changes sooner when polling.
  --
  -- if has_interface(host, "wlan") then
  --   config.mobility.poll_interval_ms = 1000
  -- end

  return config
end

-- Called before configure: true, or a message saying what is wrong with the settings
-- at the top of this script (none in the template).
function self_check()
  return true
end
