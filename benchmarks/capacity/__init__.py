"""Capacity: the planner (the SLO edge, replicas, memory), overload and soak runs, the GPU roofline model."""
