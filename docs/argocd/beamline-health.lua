-- Argo CD health of a kubesky Beamline (resource.customizations.health.kubesky.io_Beamline).
hs = {status = "Progressing", message = "waiting for the worker"}
if obj.status ~= nil and obj.status.phase ~= nil then
  local map = {Ready = "Healthy", Degraded = "Degraded", Suspended = "Suspended"}
  hs.status = map[obj.status.phase] or "Progressing"
  hs.message = obj.status.phase
  if obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      -- a plan rollout under way (the Reconciling condition) is not healthy yet
      if c.type == "Reconciling" and c.status == "True" and hs.status == "Healthy" then
        hs.status = "Progressing"
        hs.message = hs.message .. ": " .. (c.reason or "Reconciling")
      end
    end
    for _, c in ipairs(obj.status.conditions) do
      local health_type = c.type == "Ready" or c.type == "Reconciling" or c.type == "Stalled"
      if not health_type and c.status ~= "True" and c.message ~= nil and c.message ~= "" then
        hs.message = hs.message .. ": " .. c.type .. ": " .. c.message
        break
      end
    end
  end
end
return hs
