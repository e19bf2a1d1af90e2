"use strict";(self.rspackChunkipyparallel_ext=self.rspackChunkipyparallel_ext||[]).push([[232],{475(e,r,t){var o=t(601),n=t.n(o),a=t(314),i=(t.n(a))()(n());i.push([e.id,`/* The "Parallel" sidebar panel. */
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

.ipp-ext-toolbar button.ipp-ext-mod-on {
  background: var(--jp-brand-color1);
  color: var(--jp-ui-inverse-font-color1);
}

.ipp-ext-toolbar-error {
  color: var(--jp-error-color1);
  white-space: nowrap;
  overflow: hidden;
  text-overflow: ellipsis;
  max-width: 30em;
}
`,""]),t.d(r,{},{A:i})},314(e){e.exports=function(e){var r=[];return r.toString=function(){return this.map(function(r){var t="",o=void 0!==r[5];return r[4]&&(t+="@supports (".concat(r[4],") {")),r[2]&&(t+="@media ".concat(r[2]," {")),o&&(t+="@layer".concat(r[5].length>0?" ".concat(r[5]):""," {")),t+=e(r),o&&(t+="}"),r[2]&&(t+="}"),r[4]&&(t+="}"),t}).join("")},r.i=function(e,t,o,n,a){"string"==typeof e&&(e=[[null,e,void 0]]);var i={};if(o)for(var p=0;p<this.length;p++){var l=this[p][0];null!=l&&(i[l]=!0)}for(var c=0;c<e.length;c++){var s=[].concat(e[c]);o&&i[s[0]]||(void 0!==a&&(void 0===s[5]||(s[1]="@layer".concat(s[5].length>0?" ".concat(s[5]):""," {").concat(s[1],"}")),s[5]=a),t&&(s[2]&&(s[1]="@media ".concat(s[2]," {").concat(s[1],"}")),s[2]=t),n&&(s[4]?(s[1]="@supports (".concat(s[4],") {").concat(s[1],"}"),s[4]=n):s[4]="".concat(n)),r.push(s))}},r}},601(e){e.exports=function(e){return e[1]}},72(e){var r=[];function t(e){for(var t=-1,o=0;o<r.length;o++)if(r[o].identifier===e){t=o;break}return t}function o(e,o){for(var n={},a=[],i=0;i<e.length;i++){var p=e[i],l=o.base?p[0]+o.base:p[0],c=n[l]||0,s="".concat(l," ").concat(c);n[l]=c+1;var u=t(s),d={css:p[1],media:p[2],sourceMap:p[3],supports:p[4],layer:p[5]};if(-1!==u)r[u].references++,r[u].updater(d);else{var f=function(e,r){var t=r.domAPI(r);return t.update(e),function(r){r?(r.css!==e.css||r.media!==e.media||r.sourceMap!==e.sourceMap||r.supports!==e.supports||r.layer!==e.layer)&&t.update(e=r):t.remove()}}(d,o);o.byIndex=i,r.splice(i,0,{identifier:s,updater:f,references:1})}a.push(s)}return a}e.exports=function(e,n){var a=o(e=e||[],n=n||{});return function(e){e=e||[];for(var i=0;i<a.length;i++){var p=t(a[i]);r[p].references--}for(var l=o(e,n),c=0;c<a.length;c++){var s=t(a[c]);0===r[s].references&&(r[s].updater(),r.splice(s,1))}a=l}}},659(e){var r={};e.exports=function(e,t){var o=function(e){if(void 0===r[e]){var t=document.querySelector(e);if(window.HTMLIFrameElement&&t instanceof window.HTMLIFrameElement)try{t=t.contentDocument.head}catch(e){t=null}r[e]=t}return r[e]}(e);if(!o)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");o.appendChild(t)}},540(e){e.exports=function(e){var r=document.createElement("style");return e.setAttributes(r,e.attributes),e.insert(r,e.options),r}},56(e,r,t){e.exports=function(e){var r=t.nc;r&&e.setAttribute("nonce",r)}},825(e){e.exports=function(e){if("u"<typeof document)return{update:function(){},remove:function(){}};var r=e.insertStyleElement(e);return{update:function(t){var o,n,a;o="",t.supports&&(o+="@supports (".concat(t.supports,") {")),t.media&&(o+="@media ".concat(t.media," {")),(n=void 0!==t.layer)&&(o+="@layer".concat(t.layer.length>0?" ".concat(t.layer):""," {")),o+=t.css,n&&(o+="}"),t.media&&(o+="}"),t.supports&&(o+="}"),(a=t.sourceMap)&&"u">typeof btoa&&(o+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(a))))," */")),e.styleTagTransform(o,r,e.options)},remove:function(){var e;null===(e=r).parentNode||e.parentNode.removeChild(e)}}}},113(e){e.exports=function(e,r){if(r.styleSheet)r.styleSheet.cssText=e;else{for(;r.firstChild;)r.removeChild(r.firstChild);r.appendChild(document.createTextNode(e))}}},579(e,r,t){var o=t(72),n=t.n(o),a=t(825),i=t.n(a),p=t(659),l=t.n(p),c=t(56),s=t.n(c),u=t(540),d=t.n(u),f=t(113),v=t.n(f),x=t(475),m={};m.styleTagTransform=v(),m.setAttributes=s(),m.insert=l().bind(null,"head"),m.domAPI=i(),m.insertStyleElement=d(),n()(x.A,m),x.A&&x.A.locals&&x.A.locals}}]);