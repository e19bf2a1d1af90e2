// Module ids named after their paths relative to this folder: the default ("deterministic") hashes
// the module federation container's identifier, which holds the absolute path of the checkout, so
// the build would differ from one clone to another and the committed build could not be compared
// with a fresh one (.ci/run does).
module.exports = {
  optimization: {
    moduleIds: 'named'
  }
};
