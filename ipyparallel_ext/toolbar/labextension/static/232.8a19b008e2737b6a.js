"use strict";(self.rspackChunkipyparallel_ext=self.rspackChunkipyparallel_ext||[]).push([[232],{"./node_modules/css-loader/dist/cjs.js!./style/base.css"(e,t,r){var o=r("./node_modules/css-loader/dist/runtime/noSourceMaps.js"),n=r.n(o),s=r("./node_modules/css-loader/dist/runtime/api.js"),i=(r.n(s))()(n());i.push([e.id,`/* The "Parallel" sidebar panel. */
.ipp-ext-panel {
  background: var(--jp-layout-color1);
  color: var(--jp-ui-font-color1);
  font-size: var(--jp-ui-font-size1);
  overflow-y: auto;
  padding: 8px 12px;
  min-width: 240px;
}

.ipp-ext-title {
  font-size: var(--jp-ui-font-size2);
  font-weight: 600;
  margin: 4px 0 8px;
  text-transform: uppercase;
  letter-spacing: 0.05em;
}

.ipp-ext-start {
  display: grid;
  grid-template-columns: 1fr;
  gap: 6px;
  padding-bottom: 10px;
  border-bottom: var(--jp-border-width) solid var(--jp-border-color2);
}

.ipp-ext-field {
  display: grid;
  grid-template-columns: 70px 1fr;
  align-items: center;
}

.ipp-ext-panel input,
.ipp-ext-panel select {
  background: var(--jp-input-background);
  color: var(--jp-ui-font-color1);
  border: var(--jp-border-width) solid var(--jp-border-color1);
  padding: 3px 4px;
  min-width: 0;
}

.ipp-ext-panel button {
  cursor: pointer;
}

.ipp-ext-error {
  margin: 8px 0;
  padding: 6px 8px;
  color: var(--jp-error-color0);
  background: var(--jp-error-color3);
  border-left: 3px solid var(--jp-error-color1);
  white-space: pre-wrap;
}

.ipp-ext-empty {
  color: var(--jp-ui-font-color2);
}

.ipp-ext-clusters {
  list-style: none;
  margin: 0;
  padding: 0;
}

.ipp-ext-cluster {
  padding: 8px 0;
  border-bottom: var(--jp-border-width) solid var(--jp-border-color2);
}

.ipp-ext-cluster-header {
  display: flex;
  justify-content: space-between;
  font-weight: 600;
}

.ipp-ext-cluster-id {
  font-family: var(--jp-code-font-family);
  overflow: hidden;
  text-overflow: ellipsis;
}

.ipp-ext-cluster-state {
  font-weight: normal;
  color: var(--jp-ui-font-color2);
}

.ipp-ext-cluster-state[data-state='running'] {
  color: var(--jp-success-color1);
}

.ipp-ext-cluster-details {
  color: var(--jp-ui-font-color2);
}

.ipp-ext-cluster-controls {
  display: flex;
  flex-wrap: wrap;
  gap: 4px;
  margin-top: 6px;
}

.ipp-ext-cluster-controls input {
  width: 4em;
}

/* The notebook toolbar item. */
.ipp-ext-toolbar {
  display: flex;
  align-items: center;
  gap: 4px;
  padding: 0 6px;
}

.ipp-ext-engines {
  font-size: var(--jp-ui-font-size1);
  color: var(--jp-ui-font-color1);
  white-space: nowrap;
}

/* The %autopx toggle when on: unmistakable, hovered or not (beats jp-Button's minimal style). */
.ipp-ext-toolbar .jp-Button.ipp-ext-autopx.ipp-ext-mod-on,
.ipp-ext-toolbar .jp-Button.ipp-ext-autopx.ipp-ext-mod-on:hover {
  background: var(--jp-brand-color1);
  color: var(--jp-ui-inverse-font-color1);
  font-weight: 600;
}

.ipp-ext-toolbar-error {
  color: var(--jp-error-color1);
  white-space: nowrap;
  overflow: hidden;
  text-overflow: ellipsis;
  max-width: 30em;
}
`,""]),r.d(t,{},{A:i})},"./node_modules/css-loader/dist/runtime/api.js"(e){e.exports=function(e){var t=[];return t.toString=function(){return this.map(function(t){var r="",o=void 0!==t[5];return t[4]&&(r+="@supports (".concat(t[4],") {")),t[2]&&(r+="@media ".concat(t[2]," {")),o&&(r+="@layer".concat(t[5].length>0?" ".concat(t[5]):""," {")),r+=e(t),o&&(r+="}"),t[2]&&(r+="}"),t[4]&&(r+="}"),r}).join("")},t.i=function(e,r,o,n,s){"string"==typeof e&&(e=[[null,e,void 0]]);var i={};if(o)for(var a=0;a<this.length;a++){var l=this[a][0];null!=l&&(i[l]=!0)}for(var p=0;p<e.length;p++){var d=[].concat(e[p]);o&&i[d[0]]||(void 0!==s&&(void 0===d[5]||(d[1]="@layer".concat(d[5].length>0?" ".concat(d[5]):""," {").concat(d[1],"}")),d[5]=s),r&&(d[2]&&(d[1]="@media ".concat(d[2]," {").concat(d[1],"}")),d[2]=r),n&&(d[4]?(d[1]="@supports (".concat(d[4],") {").concat(d[1],"}"),d[4]=n):d[4]="".concat(n)),t.push(d))}},t}},"./node_modules/css-loader/dist/runtime/noSourceMaps.js"(e){e.exports=function(e){return e[1]}},"./node_modules/style-loader/dist/runtime/injectStylesIntoStyleTag.js"(e){var t=[];function r(e){for(var r=-1,o=0;o<t.length;o++)if(t[o].identifier===e){r=o;break}return r}function o(e,o){for(var n={},s=[],i=0;i<e.length;i++){var a=e[i],l=o.base?a[0]+o.base:a[0],p=n[l]||0,d="".concat(l," ").concat(p);n[l]=p+1;var c=r(d),u={css:a[1],media:a[2],sourceMap:a[3],supports:a[4],layer:a[5]};if(-1!==c)t[c].references++,t[c].updater(u);else{var m=function(e,t){var r=t.domAPI(t);return r.update(e),function(t){t?(t.css!==e.css||t.media!==e.media||t.sourceMap!==e.sourceMap||t.supports!==e.supports||t.layer!==e.layer)&&r.update(e=t):r.remove()}}(u,o);o.byIndex=i,t.splice(i,0,{identifier:d,updater:m,references:1})}s.push(d)}return s}e.exports=function(e,n){var s=o(e=e||[],n=n||{});return function(e){e=e||[];for(var i=0;i<s.length;i++){var a=r(s[i]);t[a].references--}for(var l=o(e,n),p=0;p<s.length;p++){var d=r(s[p]);0===t[d].references&&(t[d].updater(),t.splice(d,1))}s=l}}},"./node_modules/style-loader/dist/runtime/insertBySelector.js"(e){var t={};e.exports=function(e,r){var o=function(e){if(void 0===t[e]){var r=document.querySelector(e);if(window.HTMLIFrameElement&&r instanceof window.HTMLIFrameElement)try{r=r.contentDocument.head}catch(e){r=null}t[e]=r}return t[e]}(e);if(!o)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");o.appendChild(r)}},"./node_modules/style-loader/dist/runtime/insertStyleElement.js"(e){e.exports=function(e){var t=document.createElement("style");return e.setAttributes(t,e.attributes),e.insert(t,e.options),t}},"./node_modules/style-loader/dist/runtime/setAttributesWithoutAttributes.js"(e,t,r){e.exports=function(e){var t=r.nc;t&&e.setAttribute("nonce",t)}},"./node_modules/style-loader/dist/runtime/styleDomAPI.js"(e){e.exports=function(e){if("u"<typeof document)return{update:function(){},remove:function(){}};var t=e.insertStyleElement(e);return{update:function(r){var o,n,s;o="",r.supports&&(o+="@supports (".concat(r.supports,") {")),r.media&&(o+="@media ".concat(r.media," {")),(n=void 0!==r.layer)&&(o+="@layer".concat(r.layer.length>0?" ".concat(r.layer):""," {")),o+=r.css,n&&(o+="}"),r.media&&(o+="}"),r.supports&&(o+="}"),(s=r.sourceMap)&&"u">typeof btoa&&(o+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(s))))," */")),e.styleTagTransform(o,t,e.options)},remove:function(){var e;null===(e=t).parentNode||e.parentNode.removeChild(e)}}}},"./node_modules/style-loader/dist/runtime/styleTagTransform.js"(e){e.exports=function(e,t){if(t.styleSheet)t.styleSheet.cssText=e;else{for(;t.firstChild;)t.removeChild(t.firstChild);t.appendChild(document.createTextNode(e))}}},"./style/index.js"(e,t,r){var o=r("./node_modules/style-loader/dist/runtime/injectStylesIntoStyleTag.js"),n=r.n(o),s=r("./node_modules/style-loader/dist/runtime/styleDomAPI.js"),i=r.n(s),a=r("./node_modules/style-loader/dist/runtime/insertBySelector.js"),l=r.n(a),p=r("./node_modules/style-loader/dist/runtime/setAttributesWithoutAttributes.js"),d=r.n(p),c=r("./node_modules/style-loader/dist/runtime/insertStyleElement.js"),u=r.n(c),m=r("./node_modules/style-loader/dist/runtime/styleTagTransform.js"),f=r.n(m),v=r("./node_modules/css-loader/dist/cjs.js!./style/base.css"),x={};x.styleTagTransform=f(),x.setAttributes=d(),x.insert=l().bind(null,"head"),x.domAPI=i(),x.insertStyleElement=u(),n()(v.A,x),v.A&&v.A.locals&&v.A.locals}}]);