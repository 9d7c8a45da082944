"""The rollout controller: fleets/*.yaml -> Balena release pins, stage by stage (canary, pilot, waves).

fleetspec (the file) -> planner.plan (pure) -> executor (balena-sdk), with observe (reads), state (progress
kept in release and fleet tags), selection (who is in which stage), analysis (PromQL), controller (one pass).
"""
