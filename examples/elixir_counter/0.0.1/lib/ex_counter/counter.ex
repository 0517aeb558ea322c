defmodule ExCounter.Counter do
  @moduledoc """
  The counter process of release 0.0.1, the "before" side of the hot upgrade that
  relctl's tests drive. Its state is a bare integer, so that the change of shape in
  0.0.2 is easy to see with `:sys.get_state/1`.
  """
  use GenServer

  # release_handler hands the @vsn of the loaded module to the new code_change/3 as the
  # old version (a binary, as Elixir stores it), so keep it in step with mix.exs.
  @vsn "0.0.1"

  def start_link(_arg), do: GenServer.start_link(__MODULE__, [], name: __MODULE__)

  @spec get() :: non_neg_integer()
  def get, do: GenServer.call(__MODULE__, :get)

  @spec incr() :: pos_integer()
  def incr, do: GenServer.call(__MODULE__, :incr)

  @doc """
  A health probe for relctl's agent (`health_probes = ["Elixir.ExCounter.Counter:health"]`):
  `:ok` while the counter answers, unless `:persistent_term.put({:ex_counter, :healthy}, false)`
  was set, which survives an upgrade.
  """
  @spec health() :: :ok | {:error, :unhealthy}
  def health do
    _ = __MODULE__.get()
    if :persistent_term.get({:ex_counter, :healthy}, true), do: :ok, else: {:error, :unhealthy}
  end

  @impl true
  def init([]), do: {:ok, 0}

  @impl true
  def handle_call(:get, _from, n), do: {:reply, n, n}
  def handle_call(:incr, _from, n), do: {:reply, n + 1, n + 1}

  # 0.0.1 is the oldest version: nothing to migrate from; a reload keeps the state.
  @impl true
  def code_change(_old_vsn, n, _extra), do: {:ok, n}
end
