import Config

# Runtime configuration: mix's Config.Reader provider evaluates this on the node at boot.
# relctl's agent evaluates it again after every hot upgrade, downgrade or rollback that
# installs this release, so the key survives them (release_handler alone would drop it).
config :ex_counter, source: System.get_env("EX_COUNTER_SOURCE", "runtime.exs")
