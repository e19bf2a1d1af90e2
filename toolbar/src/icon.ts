/**
 * The panel's sidebar icon: one node fanning out to three.
 */
import { LabIcon } from '@jupyterlab/ui-components';

const SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <circle cx="12" cy="4.5" r="3"/>
    <circle cx="4" cy="19" r="3"/>
    <circle cx="12" cy="19" r="3"/>
    <circle cx="20" cy="19" r="3"/>
    <path d="M11 7h2v5h7v4h-2v-2h-5v2h-2v-2H6v2H4v-4h7z"/>
  </g>
</svg>`;

export const parallelIcon = new LabIcon({ name: 'ipyparallel-ext:parallel', svgstr: SVG });
