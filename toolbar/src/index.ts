/**
 * ipyparallel-ext: the "Parallel" sidebar panel and the notebook toolbar, in JupyterLab 4 and
 * Notebook 7 (one plugin; it uses only what both applications provide).
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';

import { ClustersApi } from './api';
import { ClusterPanel } from './panel';
import { ParallelToolbarExtension } from './toolbar';

/** The command that shows the panel (also in the command palette). */
export const OPEN_PANEL_COMMAND = 'ipyparallel-ext:open-panel';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'ipyparallel-ext:plugin',
  description: 'Clusters panel and notebook toolbar for ipyparallel_ext.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ILayoutRestorer, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ) => {
    const api = new ClustersApi(app.serviceManager.serverSettings);

    /** Put `code` in a new code cell below the active cell of the current notebook. */
    const insertCode = (code: string): string | null => {
      const panel = notebooks.currentWidget;
      if (!panel) {
        return 'Open a notebook to insert the connect code into.';
      }
      const notebook = panel.content;
      NotebookActions.insertBelow(notebook);
      if (notebook.activeCell?.model.type !== 'code') {
        NotebookActions.changeCellType(notebook, 'code');
      }
      notebook.activeCell?.model.sharedModel.setSource(code);
      app.shell.activateById(panel.id);
      return null;
    };

    const panel = new ClusterPanel(api, app.serviceManager.kernelspecs, insertCode);
    app.shell.add(panel, 'left', { rank: 250 });
    restorer?.add(panel, panel.id);

    app.commands.addCommand(OPEN_PANEL_COMMAND, {
      label: 'Show the Parallel (clusters) panel',
      execute: () => app.shell.activateById(panel.id)
    });
    palette?.addItem({ command: OPEN_PANEL_COMMAND, category: 'Parallel' });

    app.docRegistry.addWidgetExtension('Notebook', new ParallelToolbarExtension());
  }
};

export default plugin;
