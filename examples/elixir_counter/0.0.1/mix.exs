# relctl example: an Elixir counter to hot-upgrade, release 0.0.1 (the "before" side).
#
# Build:  MIX_ENV=prod mix release
# No dependencies, so neither Hex nor the network is needed.
defmodule ExCounter.MixProject do
  use Mix.Project

  def project do
    [
      app: :ex_counter,
      version: "0.0.1",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: [],
      releases: [
        ex_counter: [
          # release_handler, which performs hot upgrades, lives in :sasl and must run
          # in the node.
          applications: [sasl: :permanent],
          include_executables_for: [:unix]
        ]
      ]
    ]
  end

  def application do
    [mod: {ExCounter.Application, []}, extra_applications: [:logger]]
  end
end
