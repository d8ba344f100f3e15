-- dns_filter.lua: decides, for every DNS query the CYPHONIC resolver receives,
-- whether the name is answered from the overlay, forwarded to the upstream
-- resolvers, or blocked. See docs/scripting.md for the sandbox and the full API.
--
--   filter(name, qtype, ctx) -> "overlay" | "forward" | "block"
--     name   lower-case query name without the trailing dot ("." for the root)
--     qtype  record type mnemonic: "A", "AAAA", "MX", ... ("TYPE65400" if unknown)
--     ctx    { domain = "<overlay domain>", client = "<client IP address>" }
--
-- Order of the checks below: overlay names first (they are never blocked or
-- forwarded: they would leak overlay names to the upstream resolvers), then ALLOW
-- (exceptions to the deny list), then DENY, then forward.
--
-- Patterns, in ALLOW and DENY:
--   "ads.example.com"    exactly this name
--   "*.example.com"      every name under example.com, not example.com itself
--   "example.com" is NOT a wildcard: list both forms to cover a whole zone.

-- Names that are blocked (answered NXDOMAIN or REFUSED, see resolver.block_response).
DENY = {
  -- "*.doubleclick.net",
  -- "tracker.example.com",
}

-- Names that are forwarded even when DENY matches them.
ALLOW = {
  -- "login.doubleclick.net",
}

-- Extra suffixes answered from the overlay besides the configured domain (rarely
-- needed; the overlay NMS only knows names in its own domain).
EXTRA_OVERLAY_DOMAINS = {
}

-- Query types refused for every name outside the overlay, e.g. "ANY".
DENY_TYPES = {
}

local function under(name, suffix)
  return name == suffix
      or (#name > #suffix and name:sub(-#suffix - 1) == "." .. suffix)
end

-- True when `name` matches `pattern` (exact, or "*.suffix").
function matches(name, pattern)
  pattern = pattern:lower()
  if pattern:sub(1, 2) == "*." then
    local suffix = pattern:sub(3)
    return #name > #suffix and name:sub(-#suffix - 1) == "." .. suffix
  end
  return name == pattern
end

local function listed(name, list)
  for _, pattern in ipairs(list) do
    if matches(name, pattern) then
      return true
    end
  end
  return false
end

function filter(name, qtype, ctx)
  if under(name, ctx.domain) then
    return "overlay"
  end
  for _, extra in ipairs(EXTRA_OVERLAY_DOMAINS) do
    if under(name, extra:lower()) then
      return "overlay"
    end
  end
  for _, t in ipairs(DENY_TYPES) do
    if qtype == t then
      return "block"
    end
  end
  if listed(name, ALLOW) then
    return "forward"
  end
  if listed(name, DENY) then
    return "block"
  end
  return "forward"
end

-- Called by `cyphonic check` / the daemon at start: true, or a message.
function self_check()
  for _, list in ipairs({ DENY, ALLOW, EXTRA_OVERLAY_DOMAINS, DENY_TYPES }) do
    for i, entry in ipairs(list) do
      if type(entry) ~= "string" or entry == "" then
        return "list entry " .. i .. " is not a non-empty string"
      end
    end
  end
  for _, pattern in ipairs(DENY) do
    if pattern:find("*", 1, true) and pattern:sub(1, 2) ~= "*." then
      return "DENY pattern '" .. pattern .. "': '*' only as a leading '*.' label"
    end
  end
  for _, pattern in ipairs(ALLOW) do
    if pattern:find("*", 1, true) and pattern:sub(1, 2) ~= "*." then
      return "ALLOW pattern '" .. pattern .. "': '*' only as a leading '*.' label"
    end
  end
  return true
end
