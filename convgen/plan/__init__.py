"""Every decision between a spec + schedule and generated code: the plan types (base), one
module per plan kind (direct, co, depthwise, winograd), the planner (core.make_plan), the
blocked layout, weight preparation and the untuned default schedules (defaults)."""
