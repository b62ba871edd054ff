-- Argo CD health of a kubesky PlanRun (resource.customizations.health.kubesky.io_PlanRun).
hs = {}
if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the kubesky operator"
  return hs
end
local phase = obj.status.phase
local detail = obj.status.message or obj.status.reason or ""
if phase == "Succeeded" or phase == "Stopped" or phase == "Cancelled" then
  hs.status = "Healthy"
elseif phase == "Failed" or phase == "Aborted" or phase == "Rejected" then
  hs.status = "Degraded"
elseif phase == "Paused" then
  hs.status = "Suspended"
else
  hs.status = "Progressing"
end
if obj.status.progress ~= nil and obj.status.progress.text ~= nil and hs.status ~= "Healthy" then
  phase = phase .. " " .. obj.status.progress.text
end
hs.message = phase
if detail ~= "" then
  hs.message = phase .. ": " .. detail
end
return hs
