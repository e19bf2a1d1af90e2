/**
 * The server extension's REST API (`<base_url>/ipyparallel-ext/clusters`), typed.
 *
 * Every request goes through `ServerConnection.makeRequest` with the application's server
 * settings, so the token and the XSRF cookie are handled as for JupyterLab's own requests. A
 * response that is not 2xx becomes an `ApiError` carrying the server's `message` (the handlers
 * answer 4xx with `{"message": ...}` naming the bad field), which the panel shows as is.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** One cluster as the server describes it (see the contract in the project notes). */
export interface IClusterModel {
  id: string;
  /** Engines the cluster is meant to have. */
  engines: number;
  engines_alive: number;
  engines_busy: number;
  launcher: string;
  kernel_name: string | null;
  /** Seconds since the cluster started. */
  uptime: number;
  pid: number | null;
  state: 'running' | 'starting' | 'stopping' | string;
  sets: { [setId: string]: unknown };
  connect_code: string;
}

/** What the start form sends (`POST /ipyparallel-ext/clusters`). */
export interface IStartRequest {
  n: number;
  engines: string;
  kernel_name?: string;
  cluster_id?: string;
  launcher_options?: { [key: string]: unknown };
}

/** A response the server answered with an error status. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/**
 * The clusters API of one Jupyter server.
 */
export class ClustersApi {
  /**
   * @param settings - the application's server settings (`app.serviceManager.serverSettings`).
   */
  constructor(readonly settings: ServerConnection.ISettings) {}

  /** Every cluster on the machine. */
  async list(): Promise<IClusterModel[]> {
    const body = await this._request<{ clusters: IClusterModel[] }>('clusters', 'GET');
    return body.clusters;
  }

  /** Start a cluster; resolves with its model once the server has accepted it. */
  start(request: IStartRequest): Promise<IClusterModel> {
    return this._request<IClusterModel>('clusters', 'POST', request);
  }

  /** Scale a cluster to `n` engines. */
  scale(clusterId: string, n: number): Promise<IClusterModel> {
    return this._request<IClusterModel>(this._clusterPath(clusterId), 'PATCH', { n });
  }

  /** Stop a cluster; resolves once it has stopped. */
  async stop(clusterId: string): Promise<void> {
    await this._request<null>(this._clusterPath(clusterId), 'DELETE');
  }

  private _clusterPath(clusterId: string): string {
    return URLExt.join('clusters', encodeURIComponent(clusterId));
  }

  private async _request<T>(path: string, method: string, body?: unknown): Promise<T> {
    const url = URLExt.join(this.settings.baseUrl, 'ipyparallel-ext', path);
    const init: RequestInit = { method };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers = { 'Content-Type': 'application/json' };
    }
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(url, init, this.settings);
    } catch (error) {
      throw new ServerConnection.NetworkError(error as TypeError);
    }
    const text = await response.text();
    const data = _parseJson(text);
    if (!response.ok) {
      const message =
        data && typeof data === 'object' && typeof (data as any).message === 'string'
          ? (data as any).message
          : text || response.statusText;
      throw new ApiError(response.status, `${response.status}: ${message}`);
    }
    return data as T;
  }
}

/** The body as JSON, or null when it is empty or not JSON (an HTML error page, say). */
function _parseJson(text: string): unknown {
  if (!text) {
    return null;
  }
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}
