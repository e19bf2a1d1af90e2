/**
 * The "Parallel" sidebar panel: every cluster on the machine, a start form, and per cluster
 * scale / stop / "insert connect code".
 *
 * The list refreshes itself every `REFRESH_MS` while the panel is visible (and right after each
 * action). Rows are keyed by cluster id and updated in place, so a number being typed into a
 * row's scale box survives the refresh. Errors from the API (the server's 4xx message) are shown
 * in the panel's error line until the next successful action.
 *
 * Stable hooks for tests and styling: the panel's id `ipyparallel-ext-panel`, and
 * `data-testid` attributes on every control (`ipp-start-*`, `ipp-cluster` rows with
 * `data-cluster-id`, `ipp-scale-*`, `ipp-stop`, `ipp-insert`, `ipp-error`). Rows: `row.ts`.
 */
import { KernelSpec } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

import { ClustersApi, IClusterModel, IStartRequest } from './api';
import { el, errorMessage, labelled } from './dom';
import { parallelIcon } from './icon';
import { ClusterRow } from './row';

/** How often the visible panel asks for the cluster list. */
export const REFRESH_MS = 2000;

/** The launchers the start form offers (the server rejects one it does not know with a 400). */
export const LAUNCHERS = ['local', 'mpi', 'slurm', 'ssh'];

/** Inserts code into the active notebook; returns an error message when there is none. */
export type InsertCode = (code: string) => string | null;

/**
 * The sidebar panel.
 */
export class ClusterPanel extends Widget {
  /**
   * @param api - the server's clusters API.
   * @param kernelspecs - the kernelspec manager, for the start form's kernel list.
   * @param insertCode - puts the connect code into the active notebook.
   */
  constructor(
    private readonly _api: ClustersApi,
    private readonly _kernelspecs: KernelSpec.IManager,
    private readonly _insertCode: InsertCode
  ) {
    super();
    this.id = 'ipyparallel-ext-panel';
    this.addClass('ipp-ext-panel');
    this.title.icon = parallelIcon;
    this.title.caption = 'Parallel clusters';
    this._build();
    this._kernelspecs.specsChanged.connect(this._fillKernelspecs, this);
    this._fillKernelspecs();
  }

  /** Ask the server for the clusters now and show them. */
  async refresh(): Promise<void> {
    // One request at a time: a slow server must not pile up requests every tick. A list asked
    // for before now may predate the caller's change, so one more follows it.
    if (this._refreshing) {
      this._again ??= this._refreshing.then(() => {
        this._again = null;
        return this.refresh();
      });
      return this._again;
    }
    this._refreshing = this._api
      .list()
      .then(
        clusters => {
          this._listError = null;
          this._render(clusters);
        },
        error => {
          this._listError = errorMessage(error);
        }
      )
      .finally(() => {
        this._refreshing = null;
        this._showError();
      });
    return this._refreshing;
  }

  dispose(): void {
    this._stopTimer();
    this._kernelspecs.specsChanged.disconnect(this._fillKernelspecs, this);
    super.dispose();
  }

  protected onAfterShow(): void {
    void this.refresh();
    this._stopTimer();
    this._timer = window.setInterval(() => void this.refresh(), REFRESH_MS);
  }

  protected onAfterHide(): void {
    this._stopTimer();
  }

  protected onAfterAttach(): void {
    if (this.isVisible) {
      this.onAfterShow();
    }
  }

  protected onBeforeDetach(): void {
    this._stopTimer();
  }

  private _stopTimer(): void {
    if (this._timer !== null) {
      window.clearInterval(this._timer);
      this._timer = null;
    }
  }

  private _build(): void {
    const node = this.node;
    node.appendChild(el('h2', { class: 'ipp-ext-title' }, 'Parallel'));

    // novalidate: the panel checks the fields itself and says what is wrong in its error line,
    // where the browser's own check would silently refuse to submit.
    const form = el('form', { class: 'ipp-ext-start', 'data-testid': 'ipp-start-form', novalidate: '' });
    this._startN = el('input', {
      type: 'number',
      min: '1',
      value: '2',
      title: 'number of engines',
      'data-testid': 'ipp-start-n'
    }) as HTMLInputElement;
    this._startLauncher = el('select', {
      title: 'how the engines are started',
      'data-testid': 'ipp-start-launcher'
    }) as HTMLSelectElement;
    for (const launcher of LAUNCHERS) {
      this._startLauncher.appendChild(el('option', { value: launcher }, launcher));
    }
    this._startKernel = el('select', {
      title: "the engines' kernelspec",
      'data-testid': 'ipp-start-kernel'
    }) as HTMLSelectElement;
    this._startId = el('input', {
      type: 'text',
      placeholder: 'cluster id (optional)',
      'data-testid': 'ipp-start-id'
    }) as HTMLInputElement;
    this._startOptions = el('input', {
      type: 'text',
      placeholder: 'launcher options, JSON (optional)',
      title: 'e.g. {"hosts": ["node1", "node2"]} for ssh',
      'data-testid': 'ipp-start-options'
    }) as HTMLInputElement;
    this._startButton = el(
      'button',
      { type: 'submit', class: 'jp-mod-styled jp-mod-accept', 'data-testid': 'ipp-start' },
      'Start'
    ) as HTMLButtonElement;
    form.append(
      labelled('engines', this._startN),
      labelled('launcher', this._startLauncher),
      labelled('kernel', this._startKernel),
      this._startId,
      this._startOptions,
      this._startButton
    );
    form.addEventListener('submit', event => {
      event.preventDefault();
      void this._start();
    });
    node.appendChild(form);

    this._errorNode = el('div', { class: 'ipp-ext-error', 'data-testid': 'ipp-error' });
    this._errorNode.hidden = true;
    node.appendChild(this._errorNode);

    this._emptyNode = el('p', { class: 'ipp-ext-empty' }, 'No clusters running.');
    this._listNode = el('ul', { class: 'ipp-ext-clusters', 'data-testid': 'ipp-cluster-list' });
    node.append(this._emptyNode, this._listNode);
  }

  private _fillKernelspecs(): void {
    const specs = this._kernelspecs.specs;
    if (!specs) {
      return;
    }
    const selected = this._startKernel.value;
    this._startKernel.replaceChildren();
    // No kernel_name in the request: the server's default engine kernel.
    this._startKernel.appendChild(el('option', { value: '' }, 'default engine'));
    for (const [name, spec] of Object.entries(specs.kernelspecs)) {
      const option = el('option', { value: name }, spec?.display_name ?? name);
      this._startKernel.appendChild(option);
    }
    this._startKernel.value = selected in specs.kernelspecs ? selected : '';
  }

  private async _start(): Promise<void> {
    let request: IStartRequest;
    try {
      request = this._startRequest();
    } catch (error) {
      this._actionError = errorMessage(error);
      this._showError();
      return;
    }
    this._startButton.disabled = true;
    this._startButton.textContent = 'Starting…';
    await this._act(() => this._api.start(request));
    this._startButton.disabled = false;
    this._startButton.textContent = 'Start';
  }

  /** The start form as a request; throws with a message naming a bad field. */
  private _startRequest(): IStartRequest {
    const n = Number(this._startN.value);
    if (!Number.isInteger(n) || n < 1) {
      throw new Error(`engines must be a whole number of at least 1, not "${this._startN.value}"`);
    }
    const request: IStartRequest = { n, engines: this._startLauncher.value };
    if (this._startKernel.value) {
      request.kernel_name = this._startKernel.value;
    }
    const clusterId = this._startId.value.trim();
    if (clusterId) {
      request.cluster_id = clusterId;
    }
    const options = this._startOptions.value.trim();
    if (options) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(options);
      } catch (error) {
        throw new Error(`launcher options are not JSON: ${errorMessage(error)}`);
      }
      if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) {
        throw new Error('launcher options must be a JSON object, e.g. {"hosts": ["node1"]}');
      }
      request.launcher_options = parsed as { [key: string]: unknown };
    }
    return request;
  }

  /** Run one API action, show its error if it fails, and refresh the list either way. */
  private async _act(action: () => Promise<unknown>): Promise<void> {
    try {
      await action();
      this._actionError = null;
    } catch (error) {
      this._actionError = errorMessage(error);
    }
    this._showError();
    await this.refresh();
  }

  private _showError(): void {
    const message = this._actionError ?? this._listError;
    this._errorNode.textContent = message ?? '';
    this._errorNode.hidden = message === null;
  }

  private _render(clusters: IClusterModel[]): void {
    const seen = new Set<string>();
    for (const cluster of clusters) {
      seen.add(cluster.id);
      let row = this._rows.get(cluster.id);
      if (!row) {
        row = new ClusterRow(cluster.id, {
          scale: n => this._act(() => this._api.scale(cluster.id, n)),
          stop: () => this._act(() => this._api.stop(cluster.id)),
          insert: code => {
            this._actionError = this._insertCode(code);
            this._showError();
          },
          invalid: message => {
            this._actionError = message;
            this._showError();
          }
        });
        this._rows.set(cluster.id, row);
      }
      row.update(cluster);
      // Keep the server's order (appendChild moves a node that is already in the list).
      this._listNode.appendChild(row.node);
    }
    for (const [id, row] of this._rows) {
      if (!seen.has(id)) {
        row.node.remove();
        this._rows.delete(id);
      }
    }
    this._emptyNode.hidden = clusters.length > 0;
  }

  private _rows = new Map<string, ClusterRow>();
  private _refreshing: Promise<void> | null = null;
  private _again: Promise<void> | null = null;
  private _timer: number | null = null;
  private _listError: string | null = null;
  private _actionError: string | null = null;
  private _startN!: HTMLInputElement;
  private _startLauncher!: HTMLSelectElement;
  private _startKernel!: HTMLSelectElement;
  private _startId!: HTMLInputElement;
  private _startOptions!: HTMLInputElement;
  private _startButton!: HTMLButtonElement;
  private _errorNode!: HTMLElement;
  private _emptyNode!: HTMLElement;
  private _listNode!: HTMLElement;
}
