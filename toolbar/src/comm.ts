/**
 * The frontend end of the `ipyparallel_ext.toolbar` comm, one per notebook session.
 *
 * The kernel opens the comm when its first `Client` is created; from then on it sends
 * `{"type": "state", ...}` on every change. This object registers the comm target on each kernel
 * connection the session gets (a kernel change, and again after a restart, since a restart clears
 * the kernel's comms), keeps the latest state, and signals it: `null` means "no client in this
 * kernel" (no comm yet, the comm closed, or the kernel restarted). A page opened after the
 * client connected (a reload, a second tab) finds the kernel's toolbar comms with a
 * `comm_info_request` and opens one of its own, so its toolbar shows too.
 */
import { ISessionContext } from '@jupyterlab/apputils';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

/** The comm target the kernel opens. */
export const COMM_TARGET = 'ipyparallel_ext.toolbar';

/** What the kernel reports (`{"type": "state", ...}`). */
export interface IToolbarState {
  engines: number;
  busy: number;
  queued: number;
  autopx: boolean;
  cluster_id: string | null;
  /** A cell is running in the notebook kernel (`kernel.status` can say idle then: subshells). */
  kernel_busy: boolean;
}

/** Kernel statuses after which the comm is gone (the kernel process is new or dead). */
const _GONE: ReadonlySet<Kernel.Status> = new Set(['restarting', 'autorestarting', 'dead']);

/**
 * The toolbar comm of one notebook session.
 */
export class ToolbarComm implements IDisposable {
  constructor(private readonly _session: ISessionContext) {
    _session.kernelChanged.connect(this._onKernelChanged, this);
    this._onKernelChanged();
  }

  /** The kernel's latest state, or null while the kernel has no client. */
  get state(): IToolbarState | null {
    return this._state;
  }

  /** Emits the kernel's message when it refused a command (`{"type": "error", ...}`). */
  get error(): ISignal<this, string> {
    return this._error;
  }

  /** Emits the new state (or null) on every change. */
  get stateChanged(): ISignal<this, IToolbarState | null> {
    return this._stateChanged;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /**
   * Whether a message sent now is handled while a cell runs: the kernel has subshells and the
   * connection sends comm messages on one (JupyterLab 4.4+ with ipykernel 7), instead of queueing
   * them behind the running cell on the main shell.
   */
  get commandsRunAtOnce(): boolean {
    const kernel = this._kernel;
    // The enum's string value, not the enum: an older host application's services lack it.
    return !!kernel && kernel.supportsSubshells && (kernel.commsOverSubshells as string) !== 'disabled';
  }

  /** Send a message to the kernel's comm; false when there is no open comm. */
  send(data: { type: string; [key: string]: unknown }): boolean {
    if (!this._comm || this._comm.isDisposed) {
      return false;
    }
    this._comm.send(data as any);
    return true;
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this._session.kernelChanged.disconnect(this._onKernelChanged, this);
    this._watch(null);
    Signal.clearData(this);
  }

  private _onKernelChanged(): void {
    this._watch(this._session.session?.kernel ?? null);
  }

  /** Follow `kernel` (or none): register the target and drop the previous kernel's comm. */
  private _watch(kernel: Kernel.IKernelConnection | null): void {
    if (this._kernel) {
      this._kernel.statusChanged.disconnect(this._onStatus, this);
      if (!this._kernel.isDisposed) {
        this._kernel.removeCommTarget(COMM_TARGET, this._onCommOpen);
      }
    }
    this._kernel = kernel;
    this._drop();
    if (kernel) {
      kernel.statusChanged.connect(this._onStatus, this);
      kernel.registerCommTarget(COMM_TARGET, this._onCommOpen);
      void this._join(kernel);
    }
  }

  /** Open a comm of our own if the kernel already has a client (its toolbar comms exist). */
  private async _join(kernel: Kernel.IKernelConnection): Promise<void> {
    let comms: { [id: string]: unknown } = {};
    try {
      const reply = await kernel.requestCommInfo({ target_name: COMM_TARGET });
      if (reply.content.status === 'ok') {
        comms = reply.content.comms;
      }
    } catch {
      return; // the kernel went away meanwhile: the next kernel gets its own attempt
    }
    if (kernel !== this._kernel || this._comm || Object.keys(comms).length === 0) {
      return;
    }
    const comm = kernel.createComm(COMM_TARGET);
    this._attach(comm);
    comm.open({});
  }

  private _onStatus(kernel: Kernel.IKernelConnection, status: Kernel.Status): void {
    if (_GONE.has(status)) {
      this._drop();
    } else if (status === 'starting' || status === 'idle') {
      // Registering is an assignment: doing it again after a restart (which may have cleared
      // the connection's state) costs nothing and makes sure the new kernel's comm is heard.
      kernel.registerCommTarget(COMM_TARGET, this._onCommOpen);
    }
  }

  private _onCommOpen = (comm: Kernel.IComm, msg: KernelMessage.ICommOpenMsg): void => {
    this._attach(comm);
    this._onData(msg.content.data);
  };

  /** Make `comm` the one this toolbar listens to (a newer comm replaces an older one). */
  private _attach(comm: Kernel.IComm): void {
    this._comm = comm;
    comm.onMsg = message => {
      if (this._comm === comm) {
        this._onData(message.content.data);
      }
    };
    comm.onClose = () => {
      if (this._comm === comm) {
        this._drop();
      }
    };
  }

  private _onData(data: unknown): void {
    const state = _parseState(data);
    if (state) {
      this._set(state);
    } else if (data && typeof data === 'object' && (data as any).type === 'error') {
      this._error.emit(String((data as any).message));
    }
  }

  private _drop(): void {
    this._comm = null;
    this._set(null);
  }

  private _set(state: IToolbarState | null): void {
    if (state === null && this._state === null) {
      return;
    }
    this._state = state;
    this._stateChanged.emit(state);
  }

  private _comm: Kernel.IComm | null = null;
  private _kernel: Kernel.IKernelConnection | null = null;
  private _state: IToolbarState | null = null;
  private _disposed = false;
  private _stateChanged = new Signal<this, IToolbarState | null>(this);
  private _error = new Signal<this, string>(this);
}

/** A `state` message's fields, or null for any other message. */
function _parseState(data: unknown): IToolbarState | null {
  if (!data || typeof data !== 'object' || (data as any).type !== 'state') {
    return null;
  }
  const d = data as { [key: string]: unknown };
  const count = (value: unknown) => (typeof value === 'number' && value >= 0 ? value : 0);
  return {
    engines: count(d.engines),
    busy: count(d.busy),
    queued: count(d.queued),
    autopx: d.autopx === true,
    cluster_id: typeof d.cluster_id === 'string' ? d.cluster_id : null,
    kernel_busy: d.kernel_busy === true
  };
}
