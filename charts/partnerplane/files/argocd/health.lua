-- Argo CD health of partnerplane.io PartnerTenant, MetricPipeline and
-- CopilotDeployment. Their status follows kstatus (observedGeneration and
-- Ready / Reconciling / Stalled conditions), plus a Suspended condition.
-- Stricter than kstatus: no status, or a status written for an older
-- generation, is Progressing (the API server defaults observedGeneration to
-- -1 until a controller writes it).
local hs = { status = "Progressing", message = "Waiting for the operator to reconcile" }

local function condition(type)
  if obj.status == nil or obj.status.conditions == nil then return nil end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type then return c end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then return c.message end
  return c.reason or ""
end

if obj.metadata.deletionTimestamp ~= nil then
  hs.message = "Being deleted"
  return hs
end
if obj.status == nil or obj.status.observedGeneration == nil then
  return hs
end
if obj.status.observedGeneration ~= obj.metadata.generation then
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end
local suspended = condition("Suspended")
if suspended ~= nil and suspended.status == "True" then
  hs.status = "Suspended"
  hs.message = describe(suspended)
  return hs
end
local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = describe(reconciling)
  return hs
end
local ready = condition("Ready")
if ready ~= nil then
  if ready.status == "True" then hs.status = "Healthy" end
  hs.message = describe(ready)
end
return hs
