/**
 * One cluster's row in the "Parallel" panel: id, state, engines alive / total and busy, launcher,
 * kernel and uptime, with scale / stop / "insert connect code". Updated in place on each refresh,
 * so a number being typed into the scale box survives it.
 */
import { IClusterModel } from './api';
import { el } from './dom';

/** What a row's buttons do. */
export interface IRowActions {
  scale(n: number): Promise<void>;
  stop(): Promise<void>;
  insert(code: string): void;
  invalid(message: string): void;
}

/**
 * One cluster's row, updated in place on each refresh.
 */
export class ClusterRow {
  readonly node: HTMLElement;

  constructor(
    readonly clusterId: string,
    actions: IRowActions
  ) {
    this.node = el('li', {
      class: 'ipp-ext-cluster',
      'data-testid': 'ipp-cluster',
      'data-cluster-id': clusterId
    });
    const header = el('div', { class: 'ipp-ext-cluster-header' });
    header.append(
      el('span', { class: 'ipp-ext-cluster-id', 'data-testid': 'ipp-cluster-id' }, clusterId),
      (this._state = el('span', { class: 'ipp-ext-cluster-state', 'data-testid': 'ipp-cluster-state' }))
    );
    this._engines = el('div', { class: 'ipp-ext-cluster-engines', 'data-testid': 'ipp-cluster-engines' });
    this._details = el('div', { class: 'ipp-ext-cluster-details', 'data-testid': 'ipp-cluster-details' });

    const controls = el('div', { class: 'ipp-ext-cluster-controls' });
    this._scaleN = el('input', {
      type: 'number',
      min: '1',
      title: 'engines to scale to',
      'data-testid': 'ipp-scale-n'
    }) as HTMLInputElement;
    const scale = el('button', { class: 'jp-mod-styled', 'data-testid': 'ipp-scale' }, 'Scale');
    const stop = el('button', { class: 'jp-mod-styled jp-mod-warn', 'data-testid': 'ipp-stop' }, 'Stop');
    const insert = el(
      'button',
      {
        class: 'jp-mod-styled',
        title: 'insert a cell that connects to this cluster below the active cell',
        'data-testid': 'ipp-insert'
      },
      'Insert connect code'
    );
    scale.addEventListener('click', () => {
      const n = Number(this._scaleN.value);
      if (!this._scaleN.value || !Number.isInteger(n) || n < 1) {
        actions.invalid(`scale to a whole number of engines of at least 1, not "${this._scaleN.value}"`);
        return;
      }
      void this._busy(scale, 'Scaling…', () => actions.scale(n)).then(() => {
        this._scaleEdited = false;
      });
    });
    this._scaleN.addEventListener('input', () => {
      this._scaleEdited = true;
    });
    stop.addEventListener('click', () => void this._busy(stop, 'Stopping…', () => actions.stop()));
    insert.addEventListener('click', () => actions.insert(this._connectCode));
    controls.append(this._scaleN, scale, stop, insert);
    this.node.append(header, this._engines, this._details, controls);
  }

  /** Show the cluster's latest model. */
  update(cluster: IClusterModel): void {
    this._connectCode = cluster.connect_code;
    this._state.textContent = cluster.state;
    this._state.dataset.state = cluster.state;
    this._engines.textContent =
      `${cluster.engines_alive} / ${cluster.engines} engines alive · ` + `${cluster.engines_busy} busy`;
    this._engines.dataset.alive = String(cluster.engines_alive);
    this._engines.dataset.busy = String(cluster.engines_busy);
    this._engines.dataset.total = String(cluster.engines);
    const kernel = cluster.kernel_name ? ` · ${cluster.kernel_name}` : '';
    this._details.textContent = `${cluster.launcher}${kernel} · up ${formatUptime(cluster.uptime)}`;
    // Offer the current size as the scale target until the user types another.
    if (!this._scaleEdited) {
      this._scaleN.value = String(cluster.engines);
    }
  }

  private async _busy(button: HTMLElement, label: string, action: () => Promise<void>): Promise<void> {
    const text = button.textContent;
    (button as HTMLButtonElement).disabled = true;
    button.textContent = label;
    try {
      await action();
    } finally {
      (button as HTMLButtonElement).disabled = false;
      button.textContent = text;
    }
  }

  private _connectCode = '';
  private _scaleEdited = false;
  private _state: HTMLElement;
  private _engines: HTMLElement;
  private _details: HTMLElement;
  private _scaleN: HTMLInputElement;
}

/** "12s", "3m 05s", "2h 04m", "3d 01h". */
export function formatUptime(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const pad = (x: number) => String(x).padStart(2, '0');
  if (s < 60) {
    return `${s}s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  }
  if (s < 86400) {
    return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
  }
  return `${Math.floor(s / 86400)}d ${pad(Math.floor((s % 86400) / 3600))}h`;
}
