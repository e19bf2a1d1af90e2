/**
 * The notebook toolbar item: a live engines indicator, an `%autopx` toggle and an "interrupt
 * engines" button, for a notebook whose kernel has a client.
 *
 * Everything shown comes from the kernel's `ipyparallel_ext.toolbar` comm (see `comm.ts`); the
 * item stays hidden until the kernel opens it. The toggle shows the state the kernel reports
 * (clicking asks the kernel to flip it; typing `%autopx` flips it too). "Interrupt engines"
 * sends `{"type": "interrupt"}`, which the kernel handles at once when comm messages travel on a
 * kernel subshell (ipykernel 7 with JupyterLab 4.4+ / Notebook 7.4+), even during a blocking
 * `%px`. Without subshells a comm message waits behind the running cell, so while the kernel
 * reports `kernel_busy` the button interrupts the notebook kernel itself instead, and the client's
 * blocking wait turns that KeyboardInterrupt into interrupting its engines. (`kernel.status` is
 * not used to decide: with subshells it can read idle while a cell runs.)
 */
import { ISessionContext } from '@jupyterlab/apputils';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import { INotebookModel, NotebookPanel } from '@jupyterlab/notebook';
import { IDisposable } from '@lumino/disposable';
import { Widget } from '@lumino/widgets';

import { IToolbarState, ToolbarComm } from './comm';

/**
 * The toolbar item of one notebook.
 */
export class ParallelToolbar extends Widget {
  constructor(private readonly _session: ISessionContext) {
    super();
    this.addClass('ipp-ext-toolbar');
    this.node.dataset.testid = 'ipp-toolbar';
    this._comm = new ToolbarComm(_session);

    this._engines = document.createElement('span');
    this._engines.className = 'ipp-ext-engines';
    this._engines.dataset.testid = 'ipp-engines';

    this._autopx = _button('ipp-ext-autopx', 'ipp-autopx', '%autopx');
    this._autopx.addEventListener('click', () => this._toggleAutopx());

    this._interrupt = _button('ipp-ext-interrupt', 'ipp-interrupt', 'Interrupt engines');
    this._interrupt.title = "interrupt the engines' running work";
    this._interrupt.addEventListener('click', () => void this._interruptEngines());

    this._error = document.createElement('span');
    this._error.className = 'ipp-ext-toolbar-error';
    this._error.dataset.testid = 'ipp-toolbar-error';

    this.node.append(this._engines, this._autopx, this._interrupt, this._error);
    this._comm.stateChanged.connect((_, state) => this._show(state));
    this._comm.error.connect((_, message) => {
      this._error.textContent = message;
    });
    this._show(this._comm.state);
  }

  dispose(): void {
    this._comm.dispose();
    super.dispose();
  }

  private _show(state: IToolbarState | null): void {
    this.setHidden(state === null);
    if (state === null) {
      return;
    }
    this._error.textContent = '';
    const engines = state.engines === 1 ? '1 engine' : `${state.engines} engines`;
    this._engines.textContent = `${engines} · ${state.busy} busy · ${state.queued} queued`;
    this._engines.title = state.cluster_id ? `cluster ${state.cluster_id}` : 'engines of this kernel';
    this._engines.dataset.engines = String(state.engines);
    this._engines.dataset.busy = String(state.busy);
    this._engines.dataset.queued = String(state.queued);
    this._autopx.setAttribute('aria-pressed', String(state.autopx));
    this._autopx.dataset.state = state.autopx ? 'on' : 'off';
    this._autopx.textContent = state.autopx ? '%autopx on' : '%autopx off';
    this._autopx.title = state.autopx
      ? 'cells run on the engines; click to run them in this kernel again'
      : 'click to run the following cells on the engines (%autopx)';
    this._autopx.classList.toggle('ipp-ext-mod-on', state.autopx);
  }

  private _toggleAutopx(): void {
    const state = this._comm.state;
    if (state) {
      // The kernel answers with a state message, which is what the toggle then shows.
      this._comm.send({ type: 'autopx', on: !state.autopx });
    }
  }

  private async _interruptEngines(): Promise<void> {
    const kernel = this._session.session?.kernel;
    const state = this._comm.state;
    if (kernel && state?.kernel_busy && !this._comm.commandsRunAtOnce) {
      await kernel.interrupt();
    } else {
      this._comm.send({ type: 'interrupt' });
    }
  }

  private _comm: ToolbarComm;
  private _engines: HTMLElement;
  private _autopx: HTMLButtonElement;
  private _interrupt: HTMLButtonElement;
  private _error: HTMLElement;
}

/**
 * Adds a `ParallelToolbar` to every notebook panel.
 */
export class ParallelToolbarExtension
  implements DocumentRegistry.IWidgetExtension<NotebookPanel, INotebookModel>
{
  createNew(panel: NotebookPanel): IDisposable {
    const item = new ParallelToolbar(panel.sessionContext);
    if (!panel.toolbar.insertAfter('cellType', 'ipyparallel-ext', item)) {
      panel.toolbar.addItem('ipyparallel-ext', item);
    }
    return item;
  }
}

function _button(className: string, testid: string, text: string): HTMLButtonElement {
  const button = document.createElement('button');
  button.className = `jp-Button jp-mod-minimal jp-ToolbarButtonComponent ${className}`;
  button.dataset.testid = testid;
  button.type = 'button';
  button.textContent = text;
  return button;
}
