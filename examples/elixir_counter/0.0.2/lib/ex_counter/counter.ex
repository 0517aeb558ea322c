defmodule ExCounter.Counter do
  @moduledoc """
  The counter process of release 0.0.2, the "after" side of the hot upgrade. The state
  grows from a bare integer into a map that also remembers where it was migrated from,
  so a test can tell that code_change/3 really ran (and which way) rather than a restart.
  """
  use GenServer

  # release_handler passes the @vsn of the loaded module to code_change/3 ("0.0.1" going
  # up, {:down, "0.0.1"} going down), so keep it in step with mix.exs and the appup.
  @vsn "0.0.2"

  @type state :: %{count: non_neg_integer(), upgraded_from: :none | String.t()}

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
  def init([]), do: {:ok, %{count: 0, upgraded_from: :none}}

  @impl true
  def handle_call(:get, _from, %{count: n} = s), do: {:reply, n, s}
  def handle_call(:incr, _from, %{count: n} = s), do: {:reply, n + 1, %{s | count: n + 1}}

  # Up from 0.0.1: the integer count is carried over into the map.
  @impl true
  def code_change("0.0.1", n, _extra) when is_integer(n),
    do: {:ok, %{count: n, upgraded_from: "0.0.1"}}

  # Down to 0.0.1: this clause runs in *this* module before the old code is loaded, so
  # 0.0.2 must shape the state for its predecessor. Only the count survives.
  def code_change({:down, "0.0.1"}, %{count: n}, _extra), do: {:ok, n}

  # Reloading 0.0.2 over itself leaves an already migrated state alone.
  def code_change(_old_vsn, %{count: _} = s, _extra), do: {:ok, s}
end
