-- Argo CD health of a kubesky Beamline (resource.customizations.health.kubesky.io_Beamline).
hs = {status = "Progressing", message = "waiting for the worker"}
if obj.status ~= nil and obj.status.phase ~= nil then
  local map = {Ready = "Healthy", Degraded = "Degraded", Suspended = "Suspended"}
  hs.status = map[obj.status.phase] or "Progressing"
  hs.message = obj.status.phase
  if obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.status ~= "True" and c.message ~= nil and c.message ~= "" then
        hs.message = hs.message .. ": " .. c.type .. ": " .. c.message
        break
      end
    end
  end
end
return hs
