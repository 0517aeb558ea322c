defmodule ExCounter.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    # release_handler finds the processes to suspend through the modules of the child
    # specs; `use GenServer` names ExCounter.Counter there.
    Supervisor.start_link([ExCounter.Counter], strategy: :one_for_one, name: ExCounter.Supervisor)
  end
end
