# relctl example: an Elixir counter to hot-upgrade, release 0.0.2 (the "after" side).
#
# Build:  MIX_ENV=prod mix release
# then make the relup and the upgrade tarball against the 0.0.1 release:
#   relctl make-relup OLD_0.0.1_RELEASE_DIR _build/prod/rel/ex_counter --tarball ex_counter-0.0.2.tar.gz
defmodule ExCounter.MixProject do
  use Mix.Project

  def project do
    [
      app: :ex_counter,
      version: "0.0.2",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: [],
      releases: [
        ex_counter: [
          applications: [sasl: :permanent],
          include_executables_for: [:unix],
          # The appup must be in the application's ebin before :assemble copies it into
          # the release, where systools:make_relup and release_handler look for it.
          steps: [&copy_appup/1, :assemble]
        ]
      ]
    ]
  end

  def application do
    [mod: {ExCounter.Application, []}, extra_applications: [:logger]]
  end

  # Mix knows nothing of appups: copy rel/ex_counter.appup into the compiled ebin
  # (_build/prod/lib/ex_counter/ebin), from where :assemble copies it with the beams.
  defp copy_appup(release) do
    File.cp!("rel/ex_counter.appup", Path.join(Mix.Project.compile_path(), "ex_counter.appup"))
    release
  end
end
