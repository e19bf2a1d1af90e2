"use strict";(self.rspackChunkipyparallel_ext=self.rspackChunkipyparallel_ext||[]).push([[232],{475(e,t,r){var o=r(601),n=r.n(o),a=r(314),p=(r.n(a))()(n());p.push([e.id,`/* The "Parallel" sidebar panel. */
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
`,""]),r.d(t,{},{A:p})},314(e){e.exports=function(e){var t=[];return t.toString=function(){return this.map(function(t){var r="",o=void 0!==t[5];return t[4]&&(r+="@supports (".concat(t[4],") {")),t[2]&&(r+="@media ".concat(t[2]," {")),o&&(r+="@layer".concat(t[5].length>0?" ".concat(t[5]):""," {")),r+=e(t),o&&(r+="}"),t[2]&&(r+="}"),t[4]&&(r+="}"),r}).join("")},t.i=function(e,r,o,n,a){"string"==typeof e&&(e=[[null,e,void 0]]);var p={};if(o)for(var i=0;i<this.length;i++){var l=this[i][0];null!=l&&(p[l]=!0)}for(var s=0;s<e.length;s++){var c=[].concat(e[s]);o&&p[c[0]]||(void 0!==a&&(void 0===c[5]||(c[1]="@layer".concat(c[5].length>0?" ".concat(c[5]):""," {").concat(c[1],"}")),c[5]=a),r&&(c[2]&&(c[1]="@media ".concat(c[2]," {").concat(c[1],"}")),c[2]=r),n&&(c[4]?(c[1]="@supports (".concat(c[4],") {").concat(c[1],"}"),c[4]=n):c[4]="".concat(n)),t.push(c))}},t}},601(e){e.exports=function(e){return e[1]}},72(e){var t=[];function r(e){for(var r=-1,o=0;o<t.length;o++)if(t[o].identifier===e){r=o;break}return r}function o(e,o){for(var n={},a=[],p=0;p<e.length;p++){var i=e[p],l=o.base?i[0]+o.base:i[0],s=n[l]||0,c="".concat(l," ").concat(s);n[l]=s+1;var u=r(c),d={css:i[1],media:i[2],sourceMap:i[3],supports:i[4],layer:i[5]};if(-1!==u)t[u].references++,t[u].updater(d);else{var f=function(e,t){var r=t.domAPI(t);return r.update(e),function(t){t?(t.css!==e.css||t.media!==e.media||t.sourceMap!==e.sourceMap||t.supports!==e.supports||t.layer!==e.layer)&&r.update(e=t):r.remove()}}(d,o);o.byIndex=p,t.splice(p,0,{identifier:c,updater:f,references:1})}a.push(c)}return a}e.exports=function(e,n){var a=o(e=e||[],n=n||{});return function(e){e=e||[];for(var p=0;p<a.length;p++){var i=r(a[p]);t[i].references--}for(var l=o(e,n),s=0;s<a.length;s++){var c=r(a[s]);0===t[c].references&&(t[c].updater(),t.splice(c,1))}a=l}}},659(e){var t={};e.exports=function(e,r){var o=function(e){if(void 0===t[e]){var r=document.querySelector(e);if(window.HTMLIFrameElement&&r instanceof window.HTMLIFrameElement)try{r=r.contentDocument.head}catch(e){r=null}t[e]=r}return t[e]}(e);if(!o)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");o.appendChild(r)}},540(e){e.exports=function(e){var t=document.createElement("style");return e.setAttributes(t,e.attributes),e.insert(t,e.options),t}},56(e,t,r){e.exports=function(e){var t=r.nc;t&&e.setAttribute("nonce",t)}},825(e){e.exports=function(e){if("u"<typeof document)return{update:function(){},remove:function(){}};var t=e.insertStyleElement(e);return{update:function(r){var o,n,a;o="",r.supports&&(o+="@supports (".concat(r.supports,") {")),r.media&&(o+="@media ".concat(r.media," {")),(n=void 0!==r.layer)&&(o+="@layer".concat(r.layer.length>0?" ".concat(r.layer):""," {")),o+=r.css,n&&(o+="}"),r.media&&(o+="}"),r.supports&&(o+="}"),(a=r.sourceMap)&&"u">typeof btoa&&(o+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(a))))," */")),e.styleTagTransform(o,t,e.options)},remove:function(){var e;null===(e=t).parentNode||e.parentNode.removeChild(e)}}}},113(e){e.exports=function(e,t){if(t.styleSheet)t.styleSheet.cssText=e;else{for(;t.firstChild;)t.removeChild(t.firstChild);t.appendChild(document.createTextNode(e))}}},579(e,t,r){var o=r(72),n=r.n(o),a=r(825),p=r.n(a),i=r(659),l=r.n(i),s=r(56),c=r.n(s),u=r(540),d=r.n(u),f=r(113),v=r.n(f),x=r(475),m={};m.styleTagTransform=v(),m.setAttributes=c(),m.insert=l().bind(null,"head"),m.domAPI=p(),m.insertStyleElement=d(),n()(x.A,m),x.A&&x.A.locals&&x.A.locals}}]);